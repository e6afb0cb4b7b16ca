//! The engine's view of the shared L2: Redis when configured, otherwise
//! nothing (every look-up is `Unavailable`, every write a no-op). This keeps
//! feature flags out of the engine.

use std::{sync::Arc, time::Duration};

use crate::{key::Key, record::Record};

#[cfg(feature = "redis")]
pub(crate) use super::redis::{Lease, Renewal, Watch};
#[cfg(feature = "redis")]
use super::{
    redis::{L1Subscription, RedisStore},
    MemoryStore,
};

#[cfg(not(feature = "redis"))]
pub(crate) use disabled::{Lease, Renewal, Watch};

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

/// What a look-up in the shared store found.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) enum Lookup {
    Hit(Arc<Record>),
    /// This instance holds the key's lease: call upstream, then complete.
    Claimed(Lease),
    /// Another instance holds the lease, for at most this long.
    Busy(Duration),
    /// An unreadable value is stored: call upstream and overwrite it.
    Garbage,
    /// No shared store, or it is down: go on without it.
    Unavailable,
}

/// The shared store, if any. Every operation names the namespace by its tag
/// ([`L2::tag`]), so one store serves requests of many namespaces.
#[derive(Clone, Default)]
pub(crate) struct L2 {
    #[cfg(feature = "redis")]
    redis: Option<RedisStore>,
    /// Keeps `l1` subscribed to purges and refreshes made anywhere, for as
    /// long as the engine lives.
    #[cfg(feature = "redis")]
    _subscription: Option<Arc<L1Subscription>>,
}

#[cfg(feature = "redis")]
impl L2 {
    pub(crate) fn new(redis: Option<RedisStore>, l1: &MemoryStore) -> Self {
        let _subscription = redis.as_ref().map(|redis| redis.attach(l1.clone()));
        Self {
            redis,
            _subscription,
        }
    }

    /// The namespace's tag in the store's key names.
    pub(crate) fn tag(namespace: &str) -> String {
        super::redis::ns_tag(namespace)
    }

    pub(crate) fn redis(&self) -> Option<&RedisStore> {
        self.redis.as_ref()
    }

    pub(crate) async fn lookup(&self, ns: &str, key: &Key) -> Lookup {
        let Some(redis) = &self.redis else {
            return Lookup::Unavailable;
        };
        redis.lookup(ns, key).await
    }

    pub(crate) async fn complete(
        &self,
        ns: &str,
        key: &Key,
        lease: Option<&Lease>,
        record: Option<&Record>,
    ) {
        if let Some(redis) = &self.redis {
            redis.complete(ns, key, lease, record).await;
        }
    }

    pub(crate) fn watch(&self, key: Key) -> Option<Watch> {
        self.redis.as_ref().map(|redis| redis.watch(key))
    }

    pub(crate) fn keep_alive(&self, ns: &str, key: &Key, lease: &Lease) -> Option<Renewal> {
        self.redis
            .as_ref()
            .map(|redis| redis.keep_alive(ns, key, lease))
    }

    pub(crate) fn poll_interval(&self) -> Duration {
        self.redis
            .as_ref()
            .map_or(Duration::from_millis(500), RedisStore::poll_interval)
    }

    pub(crate) fn count_l1_hit(&self, ns: &str, key: &Key) {
        if let Some(redis) = &self.redis {
            redis.count_l1_hit(ns, key);
        }
    }

    pub(crate) fn count(&self, counter: FleetCounter, n: u64) {
        if let Some(redis) = &self.redis {
            redis.count(counter, n);
        }
    }

    pub(crate) fn health(&self) -> (u64, u64, u64) {
        self.redis
            .as_ref()
            .map_or((0, 0, 0), |r| (r.errors(), r.skipped(), r.decode_errors()))
    }
}

#[cfg(not(feature = "redis"))]
impl L2 {
    pub(crate) fn new() -> Self {
        Self {}
    }

    pub(crate) fn tag(_namespace: &str) -> String {
        String::new()
    }

    pub(crate) async fn lookup(&self, _ns: &str, _key: &Key) -> Lookup {
        Lookup::Unavailable
    }

    pub(crate) async fn complete(
        &self,
        _ns: &str,
        _key: &Key,
        _lease: Option<&Lease>,
        _record: Option<&Record>,
    ) {
    }

    pub(crate) fn watch(&self, _key: Key) -> Option<Watch> {
        None
    }

    pub(crate) fn keep_alive(&self, _ns: &str, _key: &Key, _lease: &Lease) -> Option<Renewal> {
        None
    }

    pub(crate) fn poll_interval(&self) -> Duration {
        Duration::from_millis(500)
    }

    pub(crate) fn count_l1_hit(&self, _ns: &str, _key: &Key) {}

    pub(crate) fn count(&self, _counter: FleetCounter, _n: u64) {}

    pub(crate) fn health(&self) -> (u64, u64, u64) {
        (0, 0, 0)
    }
}

#[cfg(not(feature = "redis"))]
mod disabled {
    /// Never held without a shared store.
    pub(crate) enum Lease {}
    /// Never made without a shared store.
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
}
