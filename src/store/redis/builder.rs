//! [`RedisStoreBuilder`]: the store's settings, and connecting.

use std::{
    sync::{atomic::AtomicU64, Arc, Mutex},
    time::Duration,
};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::{runtime::Handle, sync::broadcast};

use super::{
    breaker::Breakers,
    cluster::other_nodes,
    connection::Conn,
    counters::{flush_periodically, Pending},
    error::StoreError,
    keys::instance_id,
    pubsub,
    store::{Inner, RedisStore},
    stream::{self, Leading},
};
use crate::store::invalidation;

/// The settings of one store; see the builder's methods for each.
#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub(super) timeout: Duration,
    pub(super) write_timeout: Duration,
    pub(super) connect_timeout: Duration,
    pub(super) lease: Duration,
    pub(super) poll_interval: Duration,
    pub(super) flush_interval: Duration,
    pub(super) breaker_failures: u32,
    pub(super) breaker_cooldown: Duration,
    pub(super) streams: bool,
    pub(super) stream_batch: Duration,
    pub(super) stream_ttl: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_millis(50),
            write_timeout: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(1),
            lease: Duration::from_secs(10),
            poll_interval: Duration::from_millis(500),
            flush_interval: Duration::from_secs(1),
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(2),
            streams: true,
            stream_batch: Duration::from_millis(10),
            stream_ttl: Duration::from_secs(60),
        }
    }
}

/// Configures and connects a [`RedisStore`].
///
/// Made by [`RedisStore::builder`] (a single node) or
/// [`RedisStore::cluster_builder`] (a Redis Cluster). The defaults suit a
/// Redis on the local network; every setting is clamped to a sane range, so
/// none can make a deadline overflow.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use tower_idempotency::{IdempotencyLayer, RedisStore};
///
/// # async fn build() -> Result<(), tower_idempotency::StoreError> {
/// let redis = RedisStore::builder("redis://127.0.0.1:6379/")
///     .prefix("chat")
///     // A look-up slower than this is a miss: the request goes on.
///     .timeout(Duration::from_millis(20))
///     // Upstream calls take up to a minute: renewed every 10 s.
///     .lease(Duration::from_secs(30))
///     .circuit_breaker(3, Duration::from_secs(5))
///     .connect()
///     .await?;
/// let layer = IdempotencyLayer::builder().redis(redis).build();
///
/// // A cluster: some of its nodes, the others are found at connect.
/// let cluster = RedisStore::cluster_builder([
///     "redis://10.0.0.1:7000/",
///     "redis://10.0.0.2:7000/",
/// ])
/// .connect()
/// .await?;
/// # let _ = (layer, cluster);
/// # Ok(())
/// # }
/// ```
#[must_use]
pub struct RedisStoreBuilder {
    target: Target,
    prefix: String,
    settings: Settings,
}

enum Target {
    Single(String),
    Cluster(Vec<String>),
}

impl RedisStoreBuilder {
    /// Prefix of every key and channel. Default: `tidem`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Timeout of each operation on a request's path (look-up, claim, lease
    /// renewal). Default: 50 ms; kept within 1 ms and 10 minutes.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.settings.timeout = timeout.clamp(MIN_TIMEOUT, MAX_TIMEOUT);
        self
    }

    /// Timeout of writing a record, off every request's path. Default:
    /// 500 ms; kept within 1 ms and 10 minutes.
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        self.settings.write_timeout = timeout.clamp(MIN_TIMEOUT, MAX_TIMEOUT);
        self
    }

    /// Timeout of establishing a connection. Default: 1 s; kept within 1 ms
    /// and 10 minutes.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.settings.connect_timeout = timeout.clamp(MIN_TIMEOUT, MAX_TIMEOUT);
        self
    }

    /// How long a leader's claim on a key lasts without renewal. It is
    /// renewed every third of this while the call runs, so it only runs out
    /// when the leader's process is gone (a leader that fails or panics
    /// releases it at once); waiters elsewhere then take over.
    /// Default: 10 s; kept within 100 ms and one day.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.settings.lease = lease.clamp(Duration::from_millis(100), DAY);
        self
    }

    /// How often a waiter looks again if no notification arrives (a lost
    /// message, a broken subscription). Default: 500 ms; kept within 10 ms
    /// and one hour.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.settings.poll_interval = interval.clamp(MIN_INTERVAL, HOUR);
        self
    }

    /// How often counters kept locally (L1 hits, fleet totals) are flushed to
    /// Redis. Default: 1 s; kept within 10 ms and one hour.
    pub fn flush_interval(mut self, interval: Duration) -> Self {
        self.settings.flush_interval = interval.clamp(MIN_INTERVAL, HOUR);
        self
    }

    /// After `failures` consecutive failures, skip Redis for `cooldown`, then
    /// probe. Default: 5 failures, 2 s. Zero failures counts as one; the
    /// cool-down is at most one day.
    ///
    /// A single node has one breaker. A cluster has one per range of slots
    /// (16 slots each): a failing node stops only the keys it owns.
    pub fn circuit_breaker(mut self, failures: u32, cooldown: Duration) -> Self {
        self.settings.breaker_failures = failures.max(1);
        self.settings.breaker_cooldown = cooldown.min(DAY);
        self
    }

    /// Whether a leader streams its answer to waiters on other instances
    /// as it arrives (a Redis Stream per key), rather than have them wait
    /// for the stored entry. Default: on.
    ///
    /// The cost: nothing until a duplicate on another instance waits for
    /// the answer. The leader keeps its first MiB of body (the recording's
    /// own chunks, refcounted) and writes no stream; an answer that passes
    /// that MiB before anyone asks is not streamed, and its waiters
    /// elsewhere wait for the stored entry. The first waiter elsewhere
    /// asks for it (one `PUBLISH` per key and instance, at most once a
    /// second), and then the leader appends its head and the body so far,
    /// and one `XADD` per batch ([`stream_batch`](Self::stream_batch)) from
    /// then on, whatever the number of followers.
    ///
    /// The trade-off: a waiter elsewhere gets the first bytes as soon as
    /// the leader does, but once it has forwarded the head it cannot take
    /// them back. If Redis fails mid-stream, the leader dies (its lease goes
    /// without an end), or an answer of unknown length grows past the
    /// response limit, it goes through itself and continues
    /// its caller's body only if the fresh answer starts with exactly the
    /// bytes forwarded; otherwise, or if the leader's own upstream body
    /// fails, its body ends with an error (never a truncated or
    /// spliced body passed off as complete) where, without streams, it would
    /// have waited and then gone through. Behind the reqwest middleware a
    /// follower cannot go through once it has answered: there Redis failing
    /// mid-stream ends its body with an error too.
    pub fn streams(mut self, enabled: bool) -> Self {
        self.settings.streams = enabled;
        self
    }

    /// How long a leader gathers body chunks before it appends them to its
    /// stream in one round trip (or 64 KiB, whichever comes first): the
    /// latency remote followers pay for a token stream costing one append
    /// per batch rather than per token. Default: 10 ms; kept within zero
    /// and one second.
    pub fn stream_batch(mut self, batch: Duration) -> Self {
        self.settings.stream_batch = batch.min(Duration::from_secs(1));
        self
    }

    /// How long a stream outlives its last append when nobody ends it (its
    /// leader's process died). Default: 60 s; kept within 1 s and one day.
    pub fn stream_ttl(mut self, ttl: Duration) -> Self {
        self.settings.stream_ttl = ttl.clamp(Duration::from_secs(1), DAY);
        self
    }

    /// Connects. Fails if Redis cannot be reached now; afterwards, outages
    /// only make requests slower.
    pub async fn connect(self) -> Result<RedisStore, StoreError> {
        let settings = self.settings;
        let (conn, event_nodes, stream_client) = match &self.target {
            Target::Single(url) => {
                let client = redis::Client::open(url.as_str())?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(settings.connect_timeout))
                    .set_response_timeout(Some(settings.write_timeout.max(settings.timeout)))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_millis(500));
                let manager = tokio::time::timeout(
                    settings.connect_timeout,
                    ConnectionManager::new_with_config(client.clone(), config),
                )
                .await
                .map_err(|_| StoreError::timeout())??;
                (Conn::Single(manager), vec![client.clone()], Some(client))
            }
            Target::Cluster(urls) => {
                if urls.is_empty() {
                    return Err(StoreError::config("no cluster node given"));
                }
                let client =
                    redis::cluster::ClusterClient::builder(urls.iter().map(String::as_str))
                        .connection_timeout(settings.connect_timeout)
                        .response_timeout(settings.write_timeout.max(settings.timeout))
                        .retries(1)
                        // A node that stays unreachable is dropped: the next
                        // request for its slots reloads the topology, and
                        // finds the replica that took over.
                        .max_connection_attempts(std::num::NonZeroUsize::MIN.saturating_add(2))
                        .build()?;
                let connection =
                    tokio::time::timeout(settings.connect_timeout, client.get_async_connection())
                        .await
                        .map_err(|_| StoreError::timeout())??;
                // PUBLISH reaches every node of a cluster: one subscription
                // on any node hears them all, and any other will do when
                // that one goes away.
                let mut nodes = urls
                    .iter()
                    .map(|url| redis::Client::open(url.as_str()))
                    .collect::<Result<Vec<_>, _>>()?;
                let mut cluster = connection;
                let others = other_nodes(&mut cluster, &nodes, settings.connect_timeout).await;
                nodes.extend(others);
                (Conn::Cluster(cluster), nodes, None)
            }
        };
        let breakers = match &conn {
            Conn::Single(_) => {
                Breakers::single(settings.breaker_failures, settings.breaker_cooldown)
            }
            Conn::Cluster(_) => {
                Breakers::per_slot_range(settings.breaker_failures, settings.breaker_cooldown)
            }
        };
        let inner = Arc::new(Inner {
            conn,
            breakers,
            waiters: Arc::default(),
            readers: Arc::default(),
            leading: Leading::default(),
            invalidations: broadcast::channel(invalidation::CAPACITY).0,
            runtime: Handle::current(),
            pending: Pending::default(),
            flushing: tokio::sync::Mutex::new(()),
            errors: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            decode_errors: AtomicU64::new(0),
            instance: instance_id(),
            leases: AtomicU64::new(0),
            tasks: Mutex::default(),
            prefix: self.prefix,
            settings,
        });
        let subscriber = tokio::spawn(pubsub::subscribe(
            event_nodes,
            inner.channel(),
            Arc::downgrade(&inner),
            inner.settings.connect_timeout,
        ));
        let flusher = tokio::spawn(flush_periodically(Arc::downgrade(&inner)));
        let streams = tokio::spawn(stream::read_streams(
            Arc::downgrade(&inner),
            Arc::clone(&inner.readers),
            stream_client,
        ));
        inner.tasks().extend([subscriber, flusher, streams]);
        Ok(RedisStore { inner })
    }
}

impl RedisStore {
    /// Connects to a single Redis node with the default settings.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::builder(url).connect().await
    }

    /// Configures a store on a single Redis node: `redis://[user:pass@]host:port/db`
    /// (`rediss://` with the `redis-tls` feature).
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder {
            target: Target::Single(url.into()),
            prefix: "tidem".into(),
            settings: Settings::default(),
        }
    }

    /// Configures a store on a Redis Cluster, from some of its nodes' URLs.
    pub fn cluster_builder<I, S>(urls: I) -> RedisStoreBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        RedisStoreBuilder {
            target: Target::Cluster(urls.into_iter().map(Into::into).collect()),
            prefix: "tidem".into(),
            settings: Settings::default(),
        }
    }
}

const MIN_TIMEOUT: Duration = Duration::from_millis(1);
const MAX_TIMEOUT: Duration = Duration::from_secs(10 * 60);
const MIN_INTERVAL: Duration = Duration::from_millis(10);
const HOUR: Duration = Duration::from_secs(60 * 60);
const DAY: Duration = Duration::from_secs(24 * 60 * 60);
