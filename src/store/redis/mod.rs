//! L2: one shared cache, and one upstream call, across every instance.
//!
//! # Layout in Redis
//!
//! Every key starts with the configured prefix (default `tidem`) and a tag of
//! the namespace, and hash-tags the request's key so that an entry and its
//! lease share a Redis Cluster slot:
//!
//! | key | type | what |
//! |---|---|---|
//! | `tidem:<ns>:{<key>}` | hash | `r` the record, `hits`, `last_hit_at`, `created_at` (ms); expires with the entry |
//! | `tidem:<ns>:{<key>}:lease` | string | the token of the instance calling upstream for this key |
//! | `tidem:stats` | hash | fleet counters: `hits_l1`, `hits_l2`, `misses`, `coalesced`, `upstream_calls`, `stored`; expires 30 days after the last flush |
//! | `tidem:events` | channel | completions (wake waiters), answers not stored (waiters go through), refreshes and purges (evict L1 everywhere) |
//!
//! Every key expires: an entry with its record (its time to live is at most
//! ten years), a lease within its lease time, the counters a month after
//! they last changed.
//!
//! # Round trips
//!
//! An L2 hit is one round trip (a Lua script that reads the entry and counts
//! the hit); a miss is two (look-up-or-claim, then store-and-release-and-
//! notify). Hits answered from L1 are counted locally and flushed in
//! batches, as are the fleet counters.
//!
//! # Failure
//!
//! Every operation has a timeout. On error or timeout the request proceeds as
//! if there were no L2; the error is counted and logged once per burst, and a
//! circuit breaker stops trying for a while after repeated failures, then
//! probes. On a cluster there is a breaker per range of slots, so a failing
//! node only affects the keys it owns. Bytes under our keys that do not
//! decode are a miss and a log line.
//!
//! A lease is released on every path: by the store-and-release script when
//! the call completes, else by the lease's own guard when it is dropped (a
//! panic, a cancelled call, a look-up whose answer came too late), in a
//! task of its own.

mod breaker;
mod events;
pub(crate) mod scripts;

use std::{
    collections::HashMap,
    fmt,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc, Mutex, PoisonError, Weak,
    },
    time::Duration,
};

use bytes::Bytes;
use redis::{
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster_async::ClusterConnection,
    Cmd, Pipeline, RedisFuture, Value,
};
use serde::Serialize;
use tokio::task::JoinHandle;

use self::{
    breaker::Breakers,
    events::{Event, Waiters},
};
use super::{breaker::Change, FleetCounter, Lookup, MemoryStore};
use crate::{
    key::Key,
    record::{codec, now_millis, Meta, Record},
};
pub(crate) use events::Watch;

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
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

pub(super) struct Inner {
    conn: Conn,
    prefix: String,
    settings: Settings,
    breakers: Breakers,
    waiters: Arc<Waiters>,
    /// The L1 caches of the live layers on this store, evicted from when a
    /// purge or a refresh message arrives. A layer's engine holds its
    /// subscription: a dropped layer's L1 is not kept alive here.
    subscribers: Mutex<Vec<Weak<L1Subscription>>>,
    pending: Pending,
    /// Held while counters are sent, so a reader that flushes first sees
    /// every count a concurrent flush took.
    flushing: tokio::sync::Mutex<()>,
    errors: AtomicU64,
    skipped: AtomicU64,
    decode_errors: AtomicU64,
    instance: String,
    leases: AtomicU64,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

#[derive(Debug, Clone)]
struct Settings {
    timeout: Duration,
    write_timeout: Duration,
    connect_timeout: Duration,
    lease: Duration,
    poll_interval: Duration,
    flush_interval: Duration,
    breaker_failures: u32,
    breaker_cooldown: Duration,
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
        }
    }
}

/// Configures and connects a [`RedisStore`].
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

    /// Connects. Fails if Redis cannot be reached now; afterwards, outages
    /// only make requests slower.
    pub async fn connect(self) -> Result<RedisStore, StoreError> {
        let settings = self.settings;
        let (conn, event_nodes) = match &self.target {
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
                (Conn::Single(manager), vec![client])
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
                (Conn::Cluster(cluster), nodes)
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
            subscribers: Mutex::default(),
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
        let subscriber = tokio::spawn(events::subscribe(
            event_nodes,
            inner.channel(),
            Arc::downgrade(&inner),
            inner.settings.connect_timeout,
        ));
        let flusher = tokio::spawn(flush_periodically(Arc::downgrade(&inner)));
        inner.tasks().extend([subscriber, flusher]);
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

    /// Totals of every instance sharing this Redis, as last flushed.
    pub async fn fleet_stats(&self) -> Result<FleetStats, StoreError> {
        self.inner.flush().await;
        let mut conn = self.inner.conn.clone();
        let stats_key = self.inner.stats_key();
        let fields: HashMap<String, u64> = self
            .inner
            .run(
                Some(&stats_key),
                self.inner.settings.write_timeout,
                redis::cmd("HGETALL")
                    .arg(self.inner.stats_key())
                    .query_async(&mut conn),
            )
            .await?;
        let get = |name: &str| fields.get(name).copied().unwrap_or(0);
        Ok(FleetStats {
            hits_l1: get("hits_l1"),
            hits_l2: get("hits_l2"),
            misses: get("misses"),
            coalesced: get("coalesced"),
            upstream_calls: get("upstream_calls"),
            stored: get("stored"),
        })
    }

    /// Per-entry analytics of one key in one namespace, if it is stored.
    pub async fn entry_stats(
        &self,
        namespace: &str,
        key: &Key,
    ) -> Result<Option<EntryStats>, StoreError> {
        self.inner.flush().await;
        let mut conn = self.inner.conn.clone();
        let names = self.inner.names(&ns_tag(namespace), key);
        let (hits, last_hit_at, created_at): (Option<u64>, Option<u64>, Option<u64>) = self
            .inner
            .run(
                Some(&names.entry),
                self.inner.settings.write_timeout,
                redis::cmd("HMGET")
                    .arg(&names.entry)
                    .arg("hits")
                    .arg("last_hit_at")
                    .arg("created_at")
                    .query_async(&mut conn),
            )
            .await?;
        Ok(created_at.map(|created_at| EntryStats {
            hits: hits.unwrap_or(0),
            last_hit_at,
            created_at,
        }))
    }

    /// The `n` entries of a namespace replayed most often, most first: the
    /// seed's ROI query. Scans the namespace's keys (every primary of a
    /// cluster): an analytics call, not one for a request's path.
    pub async fn top_entries(
        &self,
        namespace: &str,
        n: usize,
    ) -> Result<Vec<TopEntry>, StoreError> {
        self.inner.flush().await;
        let inner = &self.inner;
        let pattern = format!("{}:{}:{{*}}", inner.prefix, ns_tag(namespace));
        let mut entries = Vec::new();
        for name in scan(inner, &pattern).await? {
            let Some(key) = name
                .rsplit_once('{')
                .and_then(|(_, rest)| rest.strip_suffix('}'))
                .and_then(Key::from_hex)
            else {
                continue;
            };
            let mut conn = inner.conn.clone();
            let mut fields = redis::cmd("HMGET");
            fields
                .arg(&name)
                .arg("hits")
                .arg("last_hit_at")
                .arg("created_at")
                .arg("meta");
            let (hits, last_hit_at, created_at, meta): (
                Option<u64>,
                Option<u64>,
                Option<u64>,
                Option<Vec<u8>>,
            ) = inner
                .run(
                    Some(&name),
                    inner.settings.write_timeout,
                    fields.query_async(&mut conn),
                )
                .await?;
            let Some(created_at) = created_at else {
                continue;
            };
            let meta = Meta::decode(meta.as_deref().unwrap_or_default());
            entries.push(TopEntry {
                key,
                stats: EntryStats {
                    hits: hits.unwrap_or(0),
                    last_hit_at,
                    created_at,
                },
                model: meta.model,
                #[cfg(feature = "ai")]
                usage: meta.usage,
            });
        }
        entries.sort_by(|a, b| b.stats.hits.cmp(&a.stats.hits).then(a.key.cmp(&b.key)));
        entries.truncate(n);
        Ok(entries)
    }

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

    /// Looks the key up, or claims its lease.
    pub(crate) async fn lookup(&self, ns: &str, key: &Key) -> Lookup {
        let inner = &self.inner;
        let names = inner.names(ns, key);
        let token = inner.next_token();
        let mut conn = inner.conn.clone();
        let mut invocation = scripts::LOOKUP.prepare_invoke();
        invocation
            .key(&names.entry)
            .key(&names.lease)
            .arg(token.as_str())
            .arg(millis(inner.settings.lease))
            .arg(now_millis());
        // Armed before the script is sent: if we stop waiting for its answer
        // (a timeout, a cancelled request), the lease it may have claimed
        // under this token is released.
        let lease = Lease::new(&self.inner, &names, *key, token);
        let mut reply: Vec<Value> = match inner
            .run(
                Some(&names.entry),
                inner.settings.timeout,
                invocation.invoke_async(&mut conn),
            )
            .await
        {
            Ok(reply) => reply,
            Err(error) => {
                if error.is_circuit_open() {
                    lease.disarm(); // nothing was sent
                }
                return Lookup::Unavailable;
            }
        };
        match reply.as_mut_slice() {
            [Value::Int(1), Value::BulkString(bytes)] => {
                lease.disarm();
                // The record takes the reply's buffer: no copy.
                match codec::decode(Bytes::from(std::mem::take(bytes))) {
                    Ok(record) if record.is_fresh_at(now_millis()) => Lookup::Hit(Arc::new(record)),
                    Ok(_) => Lookup::Garbage,
                    Err(error) => {
                        inner.decode_errors.fetch_add(1, Relaxed);
                        tracing::warn!(key = %key, %error, "ignoring an unreadable entry in redis");
                        Lookup::Garbage
                    }
                }
            }
            [Value::Int(2)] => Lookup::Claimed(lease),
            [Value::Int(3), Value::Int(ttl)] => {
                lease.disarm();
                Lookup::Busy(Duration::from_millis(u64::try_from(*ttl).unwrap_or(0)))
            }
            _ => {
                inner.decode_errors.fetch_add(1, Relaxed);
                tracing::warn!(key = %key, "unexpected reply from the look-up script");
                Lookup::Unavailable
            }
        }
    }

    /// Stores `record` (if any), releases the lease (if held), and tells
    /// every waiter on every instance: look again if it was stored, go
    /// through if not. A record stored without the lease (a refresh) is
    /// evicted from every other instance's L1.
    pub(crate) async fn complete(
        &self,
        ns: &str,
        key: &Key,
        lease: Option<&Lease>,
        record: Option<&Record>,
    ) {
        // Nothing to store and no claim to release: nobody waits on this
        // call (waiters elsewhere wait on a lease holder), so telling them
        // it ended unstored would only send them upstream early.
        if record.is_none() && lease.is_none() {
            return;
        }
        let inner = &self.inner;
        let names = inner.names(ns, key);
        let encoded = record.map(codec::encode).unwrap_or_default();
        // Redis refuses an expiry past its clock's range after the entry is
        // written: never send one.
        let ttl = record.map_or(1, |r| ttl_millis(r.ttl_at(now_millis())));
        let stored = match (record, lease) {
            (None, _) => Event::Unstored(*key),
            (Some(_), Some(_)) => Event::Done(*key),
            (Some(_), None) => Event::Replaced(*key, inner.instance.clone()),
        };
        let mut conn = inner.conn.clone();
        let mut invocation = scripts::STORE.prepare_invoke();
        invocation
            .key(&names.entry)
            .key(&names.lease)
            .arg(lease.map_or("", |l| l.token.as_str()))
            .arg(encoded)
            .arg(ttl)
            .arg(record.map_or(0, |r| r.created_at))
            .arg(inner.channel())
            .arg(stored.encode())
            .arg(record.map_or(Bytes::new(), |r| r.meta.clone()).as_ref())
            .arg(Event::Unstored(*key).encode());
        let result: Result<i64, _> = inner
            .run(
                Some(&names.entry),
                inner.settings.write_timeout,
                invocation.invoke_async(&mut conn),
            )
            .await;
        if result.is_ok() {
            lease.inspect(|lease| lease.disarm());
        }
    }

    /// Registers interest in completions of `key`.
    pub(crate) fn watch(&self, key: Key) -> Watch {
        self.inner.waiters.watch(key)
    }

    /// Keeps a lease alive until the returned guard is dropped.
    pub(crate) fn keep_alive(&self, ns: &str, key: &Key, lease: &Lease) -> Renewal {
        let names = self.inner.names(ns, key);
        let token = lease.token.clone();
        let inner = Arc::downgrade(&self.inner);
        let every = self.inner.settings.lease / 3;
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(inner) = inner.upgrade() else { return };
                let mut conn = inner.conn.clone();
                let mut invocation = scripts::RENEW.prepare_invoke();
                invocation
                    .key(&names.lease)
                    .arg(&token)
                    .arg(millis(inner.settings.lease));
                if let Ok(0) = inner
                    .run(
                        Some(&names.lease),
                        inner.settings.timeout,
                        invocation.invoke_async::<i64>(&mut conn),
                    )
                    .await
                {
                    return; // no longer ours
                }
            }
        });
        Renewal(task)
    }

    pub(crate) fn poll_interval(&self) -> Duration {
        self.inner.settings.poll_interval
    }

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

    /// Deletes one entry and evicts it from every instance's L1.
    pub(crate) async fn purge(&self, ns: &str, key: &Key) -> Result<(), StoreError> {
        let inner = &self.inner;
        let names = inner.names(ns, key);
        let mut conn = inner.conn.clone();
        let mut unlink = redis::cmd("UNLINK");
        unlink.arg(&names.entry);
        inner
            .run(
                Some(&names.entry),
                inner.settings.write_timeout,
                unlink.query_async::<i64>(&mut conn),
            )
            .await?;
        inner.publish(Event::Purged(*key), Some(&names.entry)).await
    }

    /// Deletes every entry of a namespace and clears every instance's L1.
    /// A node that does not answer keeps its entries, but does not stop the
    /// others' from being deleted nor the L1 caches from being cleared; the
    /// error is returned after.
    pub(crate) async fn purge_namespace(&self, ns: &str) -> Result<u64, StoreError> {
        let inner = &self.inner;
        let mut deleted = 0;
        let (keys, mut failed) = scan_reachable(inner, &format!("{}:{ns}:*", inner.prefix)).await;
        for key in keys {
            // One key per command: in a cluster each may live in another slot.
            let mut unlink = redis::cmd("UNLINK");
            unlink.arg(&key);
            match inner
                .run(
                    Some(&key),
                    inner.settings.write_timeout,
                    unlink.query_async::<i64>(&mut inner.conn.clone()),
                )
                .await
            {
                Ok(unlinked) => deleted += u64::try_from(unlinked).unwrap_or(0),
                Err(error) => failed = failed.or(Some(error)),
            }
        }
        inner.publish(Event::PurgedNamespace, None).await?;
        failed.map_or(Ok(deleted), Err)
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

impl Drop for Inner {
    fn drop(&mut self) {
        self.tasks().drain(..).for_each(|task| task.abort());
    }
}

/// A claim on a key: only its holder calls upstream.
///
/// Released by [`RedisStore::complete`]; dropped before that (a panic, a
/// cancelled call, a look-up whose answer we stopped waiting for), it
/// releases itself in a task of its own, if it is still ours, and wakes the
/// waiters, so that no claim outlives its leader.
pub(crate) struct Lease {
    token: String,
    key: Key,
    name: String,
    inner: Weak<Inner>,
    released: AtomicBool,
}

impl Lease {
    fn new(inner: &Arc<Inner>, names: &Names, key: Key, token: String) -> Self {
        Self {
            token,
            key,
            name: names.lease.clone(),
            inner: Arc::downgrade(inner),
            released: AtomicBool::new(false),
        }
    }

    /// Nothing is left to release.
    fn disarm(&self) {
        self.released.store(true, Relaxed);
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.released.load(Relaxed) {
            return;
        }
        let (Some(inner), Ok(runtime)) =
            (self.inner.upgrade(), tokio::runtime::Handle::try_current())
        else {
            return; // the store is gone: the lease runs out on its own
        };
        let (name, token, key) = (
            std::mem::take(&mut self.name),
            std::mem::take(&mut self.token),
            self.key,
        );
        runtime.spawn(async move { inner.release(&name, &token, &key).await });
    }
}

/// A layer's L1, subscribed to purges and refreshes made anywhere while
/// its engine holds this.
pub(crate) struct L1Subscription {
    l1: MemoryStore,
}

/// Renews a lease while it lives.
pub(crate) struct Renewal(JoinHandle<()>);

impl Drop for Renewal {
    fn drop(&mut self) {
        self.0.abort();
    }
}

const FLEET_FIELDS: [&str; 6] = [
    "hits_l1",
    "hits_l2",
    "misses",
    "coalesced",
    "upstream_calls",
    "stored",
];

#[derive(Default)]
struct Pending {
    fleet: [AtomicU64; 6],
    hits: Mutex<HashMap<(String, Key), u64>>,
}

/// Totals of every instance sharing one Redis.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct FleetStats {
    /// Answered from an instance's in-process cache.
    pub hits_l1: u64,
    /// Answered from Redis.
    pub hits_l2: u64,
    /// Led an upstream call.
    pub misses: u64,
    /// Shared a concurrent identical request's response.
    pub coalesced: u64,
    /// Calls made upstream.
    pub upstream_calls: u64,
    /// Responses stored.
    pub stored: u64,
}

/// The seed's per-entry analytics, kept in Redis with the entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct EntryStats {
    /// Times the entry was replayed, on every instance.
    pub hits: u64,
    /// When it was last replayed (ms since the Unix epoch).
    pub last_hit_at: Option<u64>,
    /// When it was stored (ms since the Unix epoch).
    pub created_at: u64,
}

/// One entry in [`RedisStore::top_entries`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct TopEntry {
    /// The entry's key.
    pub key: Key,
    /// Its hits and times.
    pub stats: EntryStats,
    /// The model the request asked for, if known.
    pub model: Option<String>,
    /// The token usage of the call it replays, if the response reported it.
    #[cfg(feature = "ai")]
    pub usage: Option<crate::ai::Usage>,
}

/// Why Redis could not be used.
#[derive(Debug)]
pub struct StoreError {
    kind: StoreErrorKind,
}

#[derive(Debug)]
enum StoreErrorKind {
    Redis(redis::RedisError),
    Timeout,
    CircuitOpen,
    Config(&'static str),
}

impl StoreError {
    fn timeout() -> Self {
        Self {
            kind: StoreErrorKind::Timeout,
        }
    }

    fn config(message: &'static str) -> Self {
        Self {
            kind: StoreErrorKind::Config(message),
        }
    }

    /// Whether the operation timed out.
    pub fn is_timeout(&self) -> bool {
        matches!(self.kind, StoreErrorKind::Timeout)
    }

    /// Whether the operation was not sent: the circuit breaker is open.
    fn is_circuit_open(&self) -> bool {
        matches!(self.kind, StoreErrorKind::CircuitOpen)
    }
}

impl From<redis::RedisError> for StoreError {
    fn from(error: redis::RedisError) -> Self {
        Self {
            kind: StoreErrorKind::Redis(error),
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            StoreErrorKind::Redis(error) => write!(f, "redis: {error}"),
            StoreErrorKind::Timeout => f.write_str("redis operation timed out"),
            StoreErrorKind::CircuitOpen => f.write_str("redis skipped: circuit breaker open"),
            StoreErrorKind::Config(message) => write!(f, "redis configuration: {message}"),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            StoreErrorKind::Redis(error) => Some(error),
            _ => None,
        }
    }
}

/// The names of one entry's keys.
struct Names {
    entry: String,
    lease: String,
}

impl Inner {
    fn names(&self, ns: &str, key: &Key) -> Names {
        let entry = format!("{}:{ns}:{{{key}}}", self.prefix);
        let lease = format!("{entry}:lease");
        Names { entry, lease }
    }

    fn channel(&self) -> String {
        format!("{}:events", self.prefix)
    }

    fn stats_key(&self) -> String {
        format!("{}:stats", self.prefix)
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.tasks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn next_token(&self) -> String {
        format!("{}-{}", self.instance, self.leases.fetch_add(1, Relaxed))
    }

    /// Runs one operation on the Redis key `name` (`None`: on no key) under
    /// a timeout and the circuit breaker of the key's slots.
    async fn run<T>(
        &self,
        name: Option<&str>,
        timeout: Duration,
        operation: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        let breaker = self.breakers.for_key(name);
        if !breaker.permit() {
            self.skipped.fetch_add(1, Relaxed);
            return Err(StoreError {
                kind: StoreErrorKind::CircuitOpen,
            });
        }
        let error = match tokio::time::timeout(timeout, operation).await {
            Ok(Ok(value)) => {
                if breaker.success() == Change::Recovered {
                    tracing::info!("redis is reachable again");
                }
                return Ok(value);
            }
            Ok(Err(error)) => StoreError::from(error),
            Err(_) => StoreError::timeout(),
        };
        self.errors.fetch_add(1, Relaxed);
        crate::telemetry::store_error();
        match breaker.failure() {
            Change::FirstFailure => {
                tracing::warn!(%error, "redis operation failed; going on without it")
            }
            Change::Opened => tracing::warn!(
                %error,
                cooldown = ?self.settings.breaker_cooldown,
                "redis keeps failing; skipping it for a while"
            ),
            _ => tracing::debug!(%error, "redis operation failed"),
        }
        Err(error)
    }

    /// Publishes `event`. On a cluster, through the node owning `route` (a
    /// key the event is about) when given: it is up if that key is usable.
    async fn publish(&self, event: Event, route: Option<&str>) -> Result<(), StoreError> {
        use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};

        let mut publish = redis::cmd("PUBLISH");
        publish.arg(self.channel()).arg(event.encode());
        match (&self.conn, route) {
            (Conn::Cluster(cluster), Some(name)) => {
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
                    Route::with_key(name, SlotAddr::Master),
                ));
                self.run(
                    Some(name),
                    self.settings.write_timeout,
                    cluster.clone().route_command(publish, routing),
                )
                .await
                .map(drop)
            }
            (Conn::Cluster(cluster), None) => {
                // Any node will do: try a few, in case one is down.
                let mut result = Ok(());
                for _ in 0..3 {
                    let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary);
                    result = self
                        .run(
                            None,
                            self.settings.write_timeout,
                            cluster.clone().route_command(publish.clone(), routing),
                        )
                        .await
                        .map(drop);
                    if result.is_ok() {
                        break;
                    }
                }
                result
            }
            (Conn::Single(_), _) => self
                .run(
                    None,
                    self.settings.write_timeout,
                    publish.query_async::<i64>(&mut self.conn.clone()),
                )
                .await
                .map(drop),
        }
    }

    /// Releases a lease if it is still ours, and wakes the waiters.
    async fn release(&self, name: &str, token: &str, key: &Key) {
        let mut release = redis::cmd("EVAL");
        release
            .arg(scripts::RELEASE_SOURCE)
            .arg(1)
            .arg(name)
            .arg(token)
            .arg(self.channel())
            .arg(Event::Done(*key).encode());
        let _: Result<i64, _> = self
            .run(
                Some(name),
                self.settings.write_timeout,
                release.query_async(&mut self.conn.clone()),
            )
            .await;
    }

    /// Acts on a message from any instance (this one included).
    async fn dispatch(&self, event: Event) {
        match event {
            Event::Done(key) => self.waiters.wake(&key),
            Event::Unstored(key) => self.waiters.pass(&key),
            Event::Replaced(key, origin) => {
                // The instance that stored it holds the fresh entry already.
                if origin != self.instance {
                    self.evict(&key).await;
                }
                self.waiters.wake(&key);
            }
            Event::Purged(key) => self.evict(&key).await,
            Event::PurgedNamespace => self.clear_l1(),
        }
    }

    async fn evict(&self, key: &Key) {
        for subscriber in self.subscribers() {
            subscriber.l1.remove(key).await;
        }
    }

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

    /// Sends the counters kept locally.
    async fn flush(&self) {
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

async fn flush_periodically(inner: std::sync::Weak<Inner>) {
    let Some(every) = inner.upgrade().map(|i| i.settings.flush_interval) else {
        return;
    };
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = inner.upgrade() else { return };
        inner.flush().await;
    }
}

/// Every key matching `pattern`: `SCAN` on the single node, or on every
/// primary of a cluster.
async fn scan(inner: &Inner, pattern: &str) -> Result<Vec<String>, StoreError> {
    match scan_reachable(inner, pattern).await {
        (found, None) => Ok(found),
        (_, Some(error)) => Err(error),
    }
}

/// [`scan`] on every node that answers, and the first error met on those
/// that do not.
async fn scan_reachable(inner: &Inner, pattern: &str) -> (Vec<String>, Option<StoreError>) {
    let mut failed = None;
    let mut found = Vec::new();
    let nodes = match &inner.conn {
        Conn::Single(_) => vec![None],
        Conn::Cluster(cluster) => match cluster_primaries(inner, &mut cluster.clone()).await {
            Ok(nodes) => nodes.into_iter().map(Some).collect(),
            Err(error) => return (found, Some(error)),
        },
    };
    for node in nodes {
        match scan_node(inner, node, pattern).await {
            Ok(keys) => found.extend(keys),
            Err(error) => failed = failed.or(Some(error)),
        }
    }
    (found, failed)
}

/// [`scan`] on one node (`None`: the single node).
async fn scan_node(
    inner: &Inner,
    node: Option<(String, u16)>,
    pattern: &str,
) -> Result<Vec<String>, StoreError> {
    use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};

    let mut found = Vec::new();
    let mut cursor = 0u64;
    loop {
        let mut scan = redis::cmd("SCAN");
        scan.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(500);
        let (next, keys): (u64, Vec<String>) = match (&node, &inner.conn) {
            (Some((host, port)), Conn::Cluster(cluster)) => {
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: host.clone(),
                    port: *port,
                });
                let value = inner
                    .run(
                        None,
                        inner.settings.write_timeout,
                        cluster.clone().route_command(scan, routing),
                    )
                    .await?;
                redis::from_redis_value(value)
                    .map_err(|e| StoreError::from(redis::RedisError::from(e)))?
            }
            _ => {
                inner
                    .run(
                        None,
                        inner.settings.write_timeout,
                        scan.query_async(&mut inner.conn.clone()),
                    )
                    .await?
            }
        };
        found.extend(keys);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    Ok(found)
}

/// The primaries of a cluster, from `CLUSTER NODES`.
async fn cluster_primaries(
    inner: &Inner,
    cluster: &mut ClusterConnection,
) -> Result<Vec<(String, u16)>, StoreError> {
    let nodes: String = inner
        .run(
            None,
            inner.settings.write_timeout,
            redis::cmd("CLUSTER").arg("NODES").query_async(cluster),
        )
        .await?;
    Ok(node_addresses(&nodes, true))
}

/// The addresses of the nodes a `CLUSTER NODES` reply lists as up: only
/// the primaries, or every node.
fn node_addresses(nodes: &str, primaries_only: bool) -> Vec<(String, u16)> {
    nodes
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = fields.get(2)?;
            if (primaries_only && !flags.contains("master")) || flags.contains("fail") {
                return None;
            }
            let address = fields.get(1)?.split(['@', ',']).next()?;
            let (host, port) = address.rsplit_once(':')?;
            Some((host.to_owned(), port.parse().ok()?))
        })
        .collect()
}

/// Clients for the cluster's other nodes, made like the first seed (its
/// credentials and database), for the subscription to move to when every
/// seed is gone. Plain TCP seeds only; otherwise the seeds alone.
async fn other_nodes(
    cluster: &mut ClusterConnection,
    seeds: &[redis::Client],
    timeout: Duration,
) -> Vec<redis::Client> {
    use redis::ConnectionAddr;

    let Some(first) = seeds.first().map(redis::Client::get_connection_info) else {
        return Vec::new();
    };
    if !matches!(first.addr(), ConnectionAddr::Tcp(..)) {
        return Vec::new();
    }
    let mut command = redis::cmd("CLUSTER");
    command.arg("NODES");
    let nodes = command.query_async::<String>(cluster);
    let Ok(Ok(nodes)) = tokio::time::timeout(timeout, nodes).await else {
        return Vec::new();
    };
    node_addresses(&nodes, false)
        .into_iter()
        .filter(|(host, port)| {
            !seeds.iter().any(|seed| {
                matches!(seed.get_connection_info().addr(),
                    ConnectionAddr::Tcp(h, p) if h == host && p == port)
            })
        })
        .filter_map(|(host, port)| {
            let info = first.clone().set_addr(ConnectionAddr::Tcp(host, port));
            redis::Client::open(info).ok()
        })
        .collect()
}

/// The namespace's tag in key names: 16 hex digits of its SHA-256, so any
/// namespace string makes a safe, fixed-length key segment.
pub(crate) fn ns_tag(namespace: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(namespace.as_bytes())[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn instance_id() -> String {
    use sha2::{Digest, Sha256};
    let seed = format!(
        "{}-{:?}-{:?}",
        std::process::id(),
        std::time::SystemTime::now(),
        std::thread::current().id()
    );
    Sha256::digest(seed.as_bytes())[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A record's time to live in milliseconds, as Redis accepts it: at least
/// 1, at most [`scripts::MAX_TTL_MS`].
fn ttl_millis(ttl: Duration) -> u64 {
    millis(ttl).min(scripts::MAX_TTL_MS)
}

const MIN_TIMEOUT: Duration = Duration::from_millis(1);
const MAX_TIMEOUT: Duration = Duration::from_secs(10 * 60);
const MIN_INTERVAL: Duration = Duration::from_millis(10);
const HOUR: Duration = Duration::from_secs(60 * 60);
const DAY: Duration = Duration::from_secs(24 * 60 * 60);
/// How long the fleet counters outlive their last flush.
const STATS_TTL_MS: u64 = 30 * 24 * 60 * 60 * 1000;

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// One connection handle, to a single node or to a cluster.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(conn) => conn.req_packed_commands(cmd, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
        }
    }
}
