//! Counting without a round trip per request: hits answered from L1 or read
//! from L2, and the fleet totals, are added up locally and flushed to Redis
//! in batches, every flush interval and before every analytics read.
//!
//! An analytics read asks every instance to flush, not only its own: it
//! publishes a flush request on the events channel, each instance flushes
//! and answers, and the read waits for as many answers as the channel has
//! subscribers (every instance subscribes once), for at most the write
//! timeout. A subscriber that does not answer (an older version, a tool
//! listening in) only makes the read wait that long.

use std::{
    collections::HashMap,
    pin::pin,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex, PoisonError, Weak,
    },
};

use tokio::sync::Notify;

use super::stats::FleetStats;
use super::{
    connection::Conn,
    error::StoreError,
    pubsub::Event,
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
    /// Hits per entry (from L1, or read from L2): (namespace tag, key).
    hits: Mutex<HashMap<(String, Key), u64>>,
    /// Flush requests this instance sent: answers received, by request.
    answers: Mutex<HashMap<String, usize>>,
    /// Woken on every answer.
    answered: Notify,
    /// Numbers this instance's flush requests.
    requests: AtomicU64,
    /// Per-tenant counts, in [`TENANT_FIELDS`] order, by tenant id.
    tenants: Mutex<HashMap<String, [u64; 5]>>,
}

/// The fields of a tenant's hash, in the order its counts are kept.
pub(super) const TENANT_FIELDS: [&str; 5] = [
    "requests",
    "upstream_calls",
    "calls_saved",
    "tokens_saved",
    "micro_dollars_saved",
];

/// How long the fleet counters outlive their last flush.
const STATS_TTL_MS: u64 = 30 * 24 * 60 * 60 * 1000;

impl RedisStore {
    /// Counts a hit answered from L1, or by a plain read of L2, against the
    /// entry (`hits`, `last_hit_at`), flushed later.
    pub(crate) fn count_l1_hit(&self, ns: &str, key: &Key) {
        let mut hits = self
            .inner
            .pending
            .hits
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *hits.entry((ns.to_owned(), *key)).or_default() += 1;
    }

    /// Adds one request's counts to its tenant's, flushed later.
    pub(crate) fn count_tenant(&self, tenant: String, counts: [u64; 5]) {
        let mut tenants = self
            .inner
            .pending
            .tenants
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let total = tenants.entry(tenant).or_default();
        for (total, n) in total.iter_mut().zip(counts) {
            *total = total.saturating_add(n);
        }
    }

    /// Adds to a fleet counter, flushed later.
    pub(crate) fn count(&self, counter: FleetCounter, n: u64) {
        self.inner.pending.fleet[counter as usize].fetch_add(n, Relaxed);
    }
}

impl Inner {
    /// Flushes this instance's counters, then asks every other instance to
    /// flush its own and waits for their answers (at most the write
    /// timeout): what an analytics read does first.
    pub(super) async fn flush_everywhere(&self) {
        self.flush().await;
        let request = format!(
            "{}-{}",
            self.instance,
            self.pending.requests.fetch_add(1, Relaxed)
        );
        self.answers().insert(request.clone(), 0);
        let deadline = tokio::time::Instant::now() + self.settings.write_timeout;
        let waited = tokio::time::timeout_at(deadline, async {
            let Ok(subscribers) = self.request_flush(&request).await else {
                return;
            };
            loop {
                let mut answered = pin!(self.pending.answered.notified());
                answered.as_mut().enable();
                if self.answers().get(&request).copied().unwrap_or(0) >= subscribers {
                    return;
                }
                answered.await;
            }
        })
        .await;
        if waited.is_err() {
            tracing::debug!("not every instance answered a flush request in time");
        }
        self.answers().remove(&request);
    }

    /// Publishes a flush request; returns how many subscribers the events
    /// channel has (each answers once): those `PUBLISH` reached on a single
    /// node; on a cluster, where `PUBLISH` counts only the node's own, the
    /// sum of `PUBSUB NUMSUB` over every node.
    async fn request_flush(&self, request: &str) -> Result<usize, StoreError> {
        let event = Event::Flush(request.to_owned());
        match &self.conn {
            Conn::Single(conn) => {
                let mut publish = redis::cmd("PUBLISH");
                publish.arg(self.channel()).arg(event.encode());
                let receivers: i64 = self
                    .run(
                        None,
                        self.settings.write_timeout,
                        publish.query_async(&mut conn.clone()),
                    )
                    .await?;
                Ok(usize::try_from(receivers).unwrap_or(0))
            }
            Conn::Cluster(cluster) => {
                let subscribers =
                    super::cluster::subscribers(self, &mut cluster.clone(), &self.channel())
                        .await?;
                self.publish(event, None).await?;
                Ok(subscribers)
            }
        }
    }

    /// An answer to a flush request, from any instance.
    pub(super) fn answer(&self, request: &str) {
        if let Some(answers) = self.answers().get_mut(request) {
            *answers += 1;
            self.pending.answered.notify_waiters();
        }
    }

    fn answers(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.pending
            .answers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

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
        self.flush_tenants().await;
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

impl Inner {
    /// Sends the per-tenant counts: each tenant's hash, and its requests in
    /// the ranking, which keeps the heaviest [`FleetStats::MAX_TENANTS`].
    /// All in one slot (`{tenants}`), so one pipeline on a cluster too.
    async fn flush_tenants(&self) {
        let tenants = std::mem::take(
            &mut *self
                .pending
                .tenants
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        if tenants.is_empty() {
            return;
        }
        let ranking = self.tenants_key();
        let mut pipe = redis::pipe();
        for (tenant, counts) in &tenants {
            let hash = self.tenant_key(tenant);
            for (field, n) in TENANT_FIELDS.iter().zip(counts) {
                if *n > 0 {
                    pipe.cmd("HINCRBY").arg(&hash).arg(*field).arg(*n).ignore();
                }
            }
            pipe.cmd("PEXPIRE").arg(&hash).arg(STATS_TTL_MS).ignore();
            pipe.cmd("ZINCRBY")
                .arg(&ranking)
                .arg(counts[0])
                .arg(tenant)
                .ignore();
        }
        let max = i64::try_from(FleetStats::MAX_TENANTS).unwrap_or(i64::MAX);
        pipe.cmd("ZREMRANGEBYRANK")
            .arg(&ranking)
            .arg(0)
            .arg(-(max + 1))
            .ignore();
        pipe.cmd("PEXPIRE").arg(&ranking).arg(STATS_TTL_MS).ignore();
        let _: Result<(), _> = self
            .run(
                Some(&ranking),
                self.settings.write_timeout,
                pipe.query_async(&mut self.conn.clone()),
            )
            .await;
    }

    /// The ranking of tenants by requests.
    pub(super) fn tenants_key(&self) -> String {
        format!("{}:{{tenants}}", self.prefix)
    }

    /// One tenant's counts, in the ranking's slot.
    pub(super) fn tenant_key(&self, tenant: &str) -> String {
        format!("{}:{{tenants}}:{tenant}", self.prefix)
    }
}

/// Flushes at another instance's request, then answers it.
pub(super) async fn flush_on_request(inner: Arc<Inner>, request: String) {
    inner.flush().await;
    let _ = inner.publish(Event::Flushed(request), None).await;
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
