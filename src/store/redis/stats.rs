//! The analytics a [`RedisStore`](super::store::RedisStore) answers:
//! fleet totals and per-entry hits.

use serde::Serialize;

use crate::key::Key;

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

/// One entry in [`RedisStore::top_entries`](super::store::RedisStore::top_entries).
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
