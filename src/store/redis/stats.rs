//! The analytics a [`RedisStore`](super::store::RedisStore) answers:
//! fleet totals and per-entry hits.

use serde::Serialize;

use crate::{key::Key, tenants::TenantStats};

/// Totals of every instance sharing one Redis.
///
/// Each instance counts locally and adds its counts to Redis in batches,
/// every flush interval. The instance that asks flushes its own first and
/// asks every other instance to flush (waiting for their answers for at most
/// the write timeout), so the totals include every instance that answered.
/// Serialises to JSON for a dashboard.
///
/// # Examples
///
/// ```no_run
/// use tower_idempotency::RedisStore;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let redis = RedisStore::connect("redis://127.0.0.1:6379/").await?;
/// let fleet = redis.fleet_stats().await?;
/// let saved = fleet.hits_l1 + fleet.hits_l2 + fleet.coalesced;
/// println!("{saved} answers without an upstream call, {} calls made", fleet.upstream_calls);
/// println!("{}", serde_json::to_string(&fleet)?);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
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
    /// Per-tenant savings of every instance that counts tenants
    /// ([`Builder::count_tenants`](crate::builder::Builder::count_tenants)),
    /// most requests first, at most [`FleetStats::MAX_TENANTS`]. Instances
    /// name a tenant alike only when they share a
    /// [`tenant_secret`](crate::builder::Builder::tenant_secret).
    pub tenants: Vec<TenantStats>,
}

impl FleetStats {
    /// The most tenants the fleet's table keeps in Redis: past it, the
    /// lightest are dropped at each flush.
    pub const MAX_TENANTS: usize = 1000;
}

/// The seed's per-entry analytics, kept in Redis with the entry.
///
/// Hits answered from an instance's L1 reach Redis in batches, like the
/// fleet totals.
///
/// # Examples
///
/// ```no_run
/// use tower_idempotency::{IdempotencyLayer, RedisStore};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let redis = RedisStore::connect("redis://127.0.0.1:6379/").await?;
/// let layer = IdempotencyLayer::builder()
///     .namespace("gpt-4o-2024-08-06")
///     .redis(redis.clone())
///     .build();
/// let (head, _) = http::Request::post("https://api.openai.com/v1/chat/completions")
///     .body(())?
///     .into_parts();
/// let body = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;
/// let key = layer.key_for(&head, body).expect("keyed from the content");
/// if let Some(entry) = redis.entry_stats("gpt-4o-2024-08-06", &key).await? {
///     println!("replayed {} times since {}", entry.hits, entry.created_at);
/// }
/// # Ok(())
/// # }
/// ```
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

/// One entry in [`RedisStore::top_entries`](super::store::RedisStore::top_entries).
///
/// # Examples
///
/// ```no_run
/// use tower_idempotency::RedisStore;
///
/// # async fn run() -> Result<(), tower_idempotency::StoreError> {
/// let redis = RedisStore::connect("redis://127.0.0.1:6379/").await?;
/// for entry in redis.top_entries("gpt-4o-2024-08-06", 10).await? {
///     let model = entry.model.as_deref().unwrap_or("?");
///     println!("{} ({model}): {} hits", entry.key, entry.stats.hits);
/// }
/// # Ok(())
/// # }
/// ```
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
