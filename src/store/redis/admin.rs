//! Calls off the request path: the analytics (fleet totals, per-entry
//! hits, the most replayed entries) and purges.

use std::{
    cmp::{Ordering, Reverse},
    collections::{BinaryHeap, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use redis::Value;
use tokio::task::JoinSet;

use super::{
    cluster::{scan, scan_reachable},
    counters::TENANT_FIELDS,
    error::StoreError,
    keys::ns_tag,
    pubsub::Event,
    stats::{EntryStats, FleetStats, TopEntry},
    store::Inner,
    store::RedisStore,
};
use crate::{key::Key, record::Meta, tenants::TenantStats};

impl RedisStore {
    /// Whether Redis answers: one `PING` (on a cluster, to every primary),
    /// within the write timeout, and how long it took. Cheap enough for a
    /// health check, unlike [`fleet_stats`](Self::fleet_stats), which first
    /// asks every instance to flush its counts and waits for them.
    ///
    /// While the circuit breaker is open this fails at once, without asking
    /// Redis, as every other call does.
    pub async fn ping(&self) -> Result<Duration, StoreError> {
        let inner = &self.inner;
        let started = Instant::now();
        inner
            .run(
                None,
                inner.settings.write_timeout,
                redis::cmd("PING").query_async::<Value>(&mut inner.conn.clone()),
            )
            .await?;
        Ok(started.elapsed())
    }

    /// Totals of every instance sharing this Redis, once every instance has
    /// flushed its counts (or the write timeout has passed).
    pub async fn fleet_stats(&self) -> Result<FleetStats, StoreError> {
        self.inner.flush_everywhere().await;
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
            tenants: self.fleet_tenants().await?,
        })
    }

    /// The fleet's tenants, most requests first.
    async fn fleet_tenants(&self) -> Result<Vec<TenantStats>, StoreError> {
        let inner = &self.inner;
        let ranking = inner.tenants_key();
        let mut conn = inner.conn.clone();
        let ids: Vec<String> = inner
            .run(
                Some(&ranking),
                inner.settings.write_timeout,
                redis::cmd("ZREVRANGE")
                    .arg(&ranking)
                    .arg(0)
                    .arg(FleetStats::MAX_TENANTS - 1)
                    .query_async(&mut conn),
            )
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.cmd("HMGET")
                .arg(inner.tenant_key(id))
                .arg(&TENANT_FIELDS[..]);
        }
        let rows: Vec<Vec<Option<u64>>> = inner
            .run(
                Some(&ranking),
                inner.settings.write_timeout,
                pipe.query_async(&mut conn),
            )
            .await?;
        let mut tenants: Vec<TenantStats> = ids
            .into_iter()
            .zip(rows)
            .map(|(tenant, row)| {
                let get = |i: usize| row.get(i).copied().flatten().unwrap_or(0);
                TenantStats::fleet(tenant, [get(0), get(1), get(2), get(3), get(4)])
            })
            .collect();
        tenants.sort_by(|a, b| b.requests.cmp(&a.requests).then(a.tenant.cmp(&b.tenant)));
        Ok(tenants)
    }

    /// Per-entry analytics of one key in one namespace, if it is stored,
    /// once every instance has flushed its hits (or the write timeout has
    /// passed).
    pub async fn entry_stats(
        &self,
        namespace: &str,
        key: &Key,
    ) -> Result<Option<EntryStats>, StoreError> {
        self.inner.flush_everywhere().await;
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
        self.inner.flush_everywhere().await;
        let inner = &self.inner;
        let pattern = format!("{}:{}:{{*}}", inner.prefix, ns_tag(namespace));
        let names = scan(inner, &pattern).await?;
        // The best `n` so far, least replayed first, so that a namespace of
        // many entries costs memory for `n` of them, not for all.
        let mut best: BinaryHeap<Reverse<Ranked>> =
            BinaryHeap::with_capacity(n.min(names.len()) + 1);
        // Read `READ_AT_ONCE` entries at a time: their commands share the
        // connection's pipeline instead of waiting one round trip each.
        for window in names.chunks(READ_AT_ONCE) {
            let mut reads = JoinSet::new();
            for name in window {
                let Some(key) = name
                    .rsplit_once('{')
                    .and_then(|(_, rest)| rest.strip_suffix('}'))
                    .and_then(Key::from_hex)
                else {
                    continue;
                };
                let inner = Arc::clone(inner);
                let name = name.clone();
                reads.spawn(async move { read_entry(&inner, &name, key).await });
            }
            while let Some(read) = reads.join_next().await {
                let Ok(read) = read else { continue };
                let Some(entry) = read? else { continue };
                best.push(Reverse(Ranked(entry)));
                if best.len() > n {
                    best.pop();
                }
            }
        }
        let mut entries: Vec<TopEntry> = best
            .into_iter()
            .map(|Reverse(Ranked(entry))| entry)
            .collect();
        entries.sort_by(rank);
        Ok(entries)
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
}

/// How many entries [`RedisStore::top_entries`] reads at once.
const READ_AT_ONCE: usize = 256;

/// One entry's counts and metadata; `None` if it is gone or not ours.
async fn read_entry(inner: &Inner, name: &str, key: Key) -> Result<Option<TopEntry>, StoreError> {
    let mut fields = redis::cmd("HMGET");
    fields
        .arg(name)
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
            Some(name),
            inner.settings.write_timeout,
            fields.query_async(&mut inner.conn.clone()),
        )
        .await?;
    let Some(created_at) = created_at else {
        return Ok(None);
    };
    let meta = Meta::decode(meta.as_deref().unwrap_or_default());
    Ok(Some(TopEntry {
        key,
        stats: EntryStats {
            hits: hits.unwrap_or(0),
            last_hit_at,
            created_at,
        },
        model: meta.model,
        #[cfg(feature = "ai")]
        usage: meta.usage,
    }))
}

/// Most hits first; among equals, the smaller key first.
fn rank(a: &TopEntry, b: &TopEntry) -> Ordering {
    b.stats.hits.cmp(&a.stats.hits).then(a.key.cmp(&b.key))
}

/// A [`TopEntry`] ordered by [`rank`]: greater is better.
struct Ranked(TopEntry);

impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> Ordering {
        rank(&other.0, &self.0)
    }
}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Ranked {}
