//! The engine's view of the L2: Redis or a SQLite file when configured,
//! otherwise nothing (every look-up is `Unavailable`, every write a no-op).
//! This keeps feature flags out of the engine.

use std::{sync::Arc, time::Duration};

use crate::{key::Key, record::Record, tenants::TenantId};

#[cfg(feature = "redis")]
use super::invalidation::L1Subscription;
use super::memory::MemoryStore;
#[cfg(feature = "redis")]
use super::redis::RedisStore;
#[cfg(feature = "redis")]
pub(crate) use super::redis::{Follow, Lease, Renewal, StreamEntry, StreamWriter, Watch};
#[cfg(feature = "sqlite")]
use super::sqlite::SqliteStore;

#[cfg(not(feature = "redis"))]
pub(crate) use disabled::{Follow, Lease, Renewal, StreamEntry, StreamWriter, Watch};

/// The fleet totals kept in the shared store.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) enum FleetCounter {
    HitsL1,
    HitsL2,
    Misses,
    Coalesced,
    UpstreamCalls,
    Stored,
}

/// What a look-up in the L2 found.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) enum Lookup {
    Hit(Arc<Record>),
    /// This instance holds the key's lease: call upstream, then complete.
    Claimed(Lease),
    /// Another instance holds the lease, for at most this long.
    Busy(Duration),
    /// An unreadable value is stored: call upstream and overwrite it.
    Garbage,
    /// No entry and no lease to take (a store without cross-process single
    /// flight), no L2, or it is down: go on without it.
    Unavailable,
}

/// The one L2 a layer uses, if any.
#[derive(Clone, Default)]
pub(crate) enum Backend {
    #[default]
    None,
    #[cfg(feature = "redis")]
    Redis(RedisStore),
    #[cfg(feature = "sqlite")]
    Sqlite(SqliteStore),
}

/// The L2, if any. Every operation names the namespace by its tag
/// ([`L2::tag`]), so one store serves requests of many namespaces.
#[derive(Clone, Default)]
pub(crate) struct L2 {
    backend: Backend,
    /// Applies the store's invalidations (purges and refreshes made
    /// anywhere, and "drop everything" after missed messages) to the
    /// engine's L1, for as long as the engine lives: the last clone dropped
    /// stops it.
    #[cfg(feature = "redis")]
    _subscription: Option<Arc<L1Subscription>>,
}

impl L2 {
    /// The L2 view of an engine whose L1 is `l1`: with a store that
    /// publishes invalidations, `l1` follows them from now on.
    pub(crate) fn new(backend: Backend, l1: &MemoryStore) -> Self {
        let _ = l1;
        Self {
            #[cfg(feature = "redis")]
            _subscription: match &backend {
                Backend::Redis(redis) => Some(Arc::new(L1Subscription::spawn(
                    l1.clone(),
                    redis.invalidations(),
                    redis.runtime(),
                ))),
                _ => None,
            },
            backend,
        }
    }

    /// The namespace's tag in the store: a short hash in Redis's key names,
    /// the name itself in SQLite's `model_version` column.
    pub(crate) fn tag(&self, namespace: &str) -> String {
        match &self.backend {
            #[cfg(feature = "redis")]
            Backend::Redis(_) => super::redis::ns_tag(namespace),
            _ => namespace.to_owned(),
        }
    }

    #[cfg(feature = "redis")]
    pub(crate) fn redis(&self) -> Option<&RedisStore> {
        match &self.backend {
            Backend::Redis(redis) => Some(redis),
            _ => None,
        }
    }

    pub(crate) async fn lookup(&self, ns: &str, key: &Key) -> Lookup {
        let _ = (ns, key);
        match &self.backend {
            #[cfg(feature = "redis")]
            Backend::Redis(redis) => redis.lookup(ns, key).await,
            #[cfg(feature = "sqlite")]
            Backend::Sqlite(sqlite) => sqlite.lookup(key).await,
            Backend::None => Lookup::Unavailable,
        }
    }

    /// The key's entry in the shared store, if it has one that reads:
    /// a plain read, which claims nothing. Only Redis is asked: the entries
    /// it is asked about, provisional copies (`Meta::provisional`), come
    /// only from following a Redis stream.
    pub(crate) async fn peek(&self, ns: &str, key: &Key) -> Option<Arc<Record>> {
        let _ = (ns, key);
        match &self.backend {
            #[cfg(feature = "redis")]
            Backend::Redis(redis) => redis.peek(ns, key).await,
            _ => None,
        }
    }

    pub(crate) async fn complete(
        &self,
        ns: &str,
        key: &Key,
        lease: Option<&Lease>,
        record: Option<&Record>,
    ) {
        let _ = (ns, key, lease, record);
        match &self.backend {
            #[cfg(feature = "redis")]
            Backend::Redis(redis) => redis.complete(ns, key, lease, record).await,
            #[cfg(feature = "sqlite")]
            Backend::Sqlite(sqlite) => {
                if let Some(record) = record {
                    sqlite.store(ns, key, record).await;
                }
            }
            Backend::None => {}
        }
    }

    /// A subscription to the key's completion on other instances, where the
    /// store coalesces across processes.
    pub(crate) fn watch(&self, key: Key) -> Option<Watch> {
        let _ = key;
        match &self.backend {
            #[cfg(feature = "redis")]
            Backend::Redis(redis) => Some(redis.watch(key)),
            _ => None,
        }
    }

    pub(crate) fn keep_alive(&self, ns: &str, key: &Key, lease: &Lease) -> Option<Renewal> {
        let _ = (ns, key, lease);
        match &self.backend {
            #[cfg(feature = "redis")]
            Backend::Redis(redis) => Some(redis.keep_alive(ns, key, lease)),
            _ => None,
        }
    }

    pub(crate) fn poll_interval(&self) -> Duration {
        match &self.backend {
            #[cfg(feature = "redis")]
            Backend::Redis(redis) => redis.poll_interval(),
            _ => Duration::from_millis(500),
        }
    }

    pub(crate) fn count_l1_hit(&self, ns: &str, key: &Key) {
        let _ = (ns, key);
        match &self.backend {
            #[cfg(feature = "redis")]
            Backend::Redis(redis) => redis.count_l1_hit(ns, key),
            #[cfg(feature = "sqlite")]
            Backend::Sqlite(sqlite) => sqlite.count_hit(key),
            Backend::None => {}
        }
    }

    /// The count of `key`'s requests for sample buckets, when the store
    /// keeps one for every instance (Redis); `None` otherwise.
    pub(crate) async fn bucket_count(&self, ns: &str, key: &Key, ttl: Duration) -> Option<u64> {
        let _ = (ns, key, ttl);
        match &self.backend {
            #[cfg(feature = "redis")]
            Backend::Redis(redis) => redis.bucket_count(ns, key, ttl).await,
            _ => None,
        }
    }

    /// Adds one request to its tenant's fleet counts (requests, upstream
    /// calls, calls saved, tokens, micro-dollars), flushed later.
    pub(crate) fn count_tenant(&self, tenant: &TenantId, counts: [u64; 5]) {
        let _ = (tenant, counts);
        #[cfg(feature = "redis")]
        if let Backend::Redis(redis) = &self.backend {
            redis.count_tenant(tenant.to_string(), counts);
        }
    }

    pub(crate) fn count(&self, counter: FleetCounter, n: u64) {
        let _ = (counter, n);
        #[cfg(feature = "redis")]
        if let Backend::Redis(redis) = &self.backend {
            redis.count(counter, n);
        }
    }

    /// Deletes one entry from the L2 (other instances evict it from their
    /// L1 where the store tells them).
    pub(crate) async fn purge(&self, ns: &str, key: &Key) {
        let _ = (ns, key);
        match &self.backend {
            #[cfg(feature = "redis")]
            Backend::Redis(redis) => {
                if let Err(error) = redis.purge(ns, key).await {
                    tracing::warn!(%error, "could not purge the entry from redis");
                }
            }
            #[cfg(feature = "sqlite")]
            Backend::Sqlite(sqlite) => sqlite.purge(key).await,
            Backend::None => {}
        }
    }

    /// Deletes every entry of a namespace from the L2.
    pub(crate) async fn purge_namespace(&self, ns: &str) {
        let _ = ns;
        match &self.backend {
            #[cfg(feature = "redis")]
            Backend::Redis(redis) => {
                if let Err(error) = redis.purge_namespace(ns).await {
                    tracing::warn!(%error, "could not purge the namespace from redis");
                }
            }
            #[cfg(feature = "sqlite")]
            Backend::Sqlite(sqlite) => {
                if sqlite.purge_namespace(ns).await.is_none() {
                    tracing::warn!("could not purge the namespace from the sqlite store");
                }
            }
            Backend::None => {}
        }
    }

    /// Streams a shareable answer whose head is `head` (a record without a
    /// body) to waiters on other instances, where the store can; `lease`
    /// is the leader's, which names its entries.
    pub(crate) fn stream_writer(
        &self,
        ns: &str,
        key: &Key,
        head: &Record,
        limit: u64,
        lease: &Lease,
    ) -> Option<StreamWriter> {
        let _ = (ns, key, head, limit, lease);
        match &self.backend {
            #[cfg(feature = "redis")]
            Backend::Redis(redis) => redis.stream_writer(ns, key, head, limit, lease),
            _ => None,
        }
    }

    /// Follows the answer another instance streams for `key`, if it does.
    pub(crate) async fn follow(&self, ns: &str, key: &Key) -> Option<Follow> {
        let _ = (ns, key);
        match &self.backend {
            #[cfg(feature = "redis")]
            Backend::Redis(redis) => redis.follow(ns, key).await,
            _ => None,
        }
    }

    /// Errors, skipped operations and undecodable entries so far.
    pub(crate) fn health(&self) -> (u64, u64, u64) {
        match &self.backend {
            #[cfg(feature = "redis")]
            Backend::Redis(r) => (r.errors(), r.skipped(), r.decode_errors()),
            #[cfg(feature = "sqlite")]
            Backend::Sqlite(s) => (s.errors(), s.skipped(), s.decode_errors()),
            Backend::None => (0, 0, 0),
        }
    }
}

#[cfg(not(feature = "redis"))]
mod disabled {
    /// Never held without Redis.
    pub(crate) enum Lease {}
    /// Never made without Redis.
    pub(crate) enum Watch {}
    impl Watch {
        pub(crate) fn notify(&self) -> &tokio::sync::Notify {
            match *self {}
        }
        pub(crate) fn passed(&self) -> bool {
            match *self {}
        }
    }
    pub(crate) struct Renewal;

    /// Never made without Redis.
    pub(crate) enum StreamWriter {}
    impl StreamWriter {
        pub(crate) fn chunk(&self, _: &bytes::Bytes) {
            match *self {}
        }
        pub(crate) async fn finish(self, _: Option<&http::HeaderMap>) {
            match self {}
        }
        pub(crate) fn fail(self) {
            match self {}
        }
    }

    /// Never made without Redis.
    pub(crate) struct Follow {
        pub(crate) head: std::sync::Arc<crate::record::Record>,
        pub(crate) entries: tokio::sync::mpsc::UnboundedReceiver<StreamEntry>,
    }

    /// Never received without Redis.
    #[allow(dead_code)]
    pub(crate) enum StreamEntry {
        Chunk(bytes::Bytes),
        End(Option<http::HeaderMap>),
        LeaderFailed,
        Failed(&'static str),
    }
}
