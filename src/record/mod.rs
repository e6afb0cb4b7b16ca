//! The stored response: what a replay is made of.

#[cfg(any(feature = "redis", feature = "sqlite"))]
pub(crate) mod codec;
mod vary;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, StatusCode, Version};
use serde::{Deserialize, Serialize};

pub(crate) use vary::Vary;

use crate::key::Key;

/// A complete response, as stored and replayed.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    pub(crate) status: StatusCode,
    pub(crate) version: Version,
    /// Already stripped of what must not be shared (see `policy`).
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    pub(crate) trailers: Option<HeaderMap>,
    /// Milliseconds since the Unix epoch.
    pub(crate) created_at: u64,
    /// Milliseconds since the Unix epoch.
    pub(crate) expires_at: u64,
    /// [`Meta`], encoded: what travels to and from the shared store.
    pub(crate) meta: Bytes,
    /// [`Meta`], decoded once.
    pub(crate) info: Meta,
}

/// What the layer learned of a request and its response, kept with the entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Meta {
    /// In `Idempotency-Key` mode, the content key of the payload first sent
    /// with the key: a different payload under the same key is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) fingerprint: Option<Key>,
    /// The model the request asked for (or the response named).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) model: Option<String>,
    /// When the response varies on request headers outside the key: the
    /// digest of the values the request that caused it had (see [`Vary`]).
    /// Without it such an entry answers no request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) vary: Option<Key>,
    /// Token usage the response reported.
    #[cfg(feature = "ai")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) usage: Option<crate::ai::Usage>,
    /// A stand-in, kept in this instance's L1 only: the answer of a call
    /// made in place of another instance's, which the shared store may get
    /// from that instance. Replayed only while the shared store has no
    /// entry for the key, or cannot be read. Never leaves the process.
    #[serde(skip)]
    pub(crate) provisional: bool,
}

impl Meta {
    pub(crate) fn encode(&self) -> Bytes {
        if *self == Self::default() {
            return Bytes::new();
        }
        serde_json::to_vec(self)
            .map(Bytes::from)
            .unwrap_or_default()
    }

    /// Never fails: unreadable metadata is no metadata.
    #[cfg(any(feature = "redis", feature = "sqlite"))]
    pub(crate) fn decode(bytes: &[u8]) -> Self {
        if bytes.is_empty() {
            return Self::default();
        }
        serde_json::from_slice(bytes).unwrap_or_default()
    }
}

/// What an entry costs besides its bytes of body, metadata and headers: the
/// record itself in its `Arc`, the body's and metadata's allocations, and
/// moka's own per-entry structures (value entry, entry info, deque and
/// timer-wheel nodes, hash-table bucket, the key's `Arc`: about 400 bytes).
const OVERHEAD: usize = std::mem::size_of::<Record>() + 16 + 64 + 400;
/// What a header costs besides its name and value: its slot in the
/// `HeaderMap` (name, value, hash and links: about 104 bytes), its index, and
/// the allocation of its value.
const PER_HEADER: usize = 144;

impl Record {
    /// How many bytes this entry costs in the L1 budget.
    pub(crate) fn weight(&self) -> u32 {
        let headers = |map: &HeaderMap| -> usize {
            map.iter()
                .map(|(n, v)| n.as_str().len() + v.len() + PER_HEADER)
                .sum()
        };
        let total = OVERHEAD
            + self.body.len()
            + self.meta.len()
            + headers(&self.headers)
            + self.trailers.as_ref().map_or(0, headers);
        u32::try_from(total).unwrap_or(u32::MAX)
    }

    /// Time left to live at `now`; zero once expired.
    pub(crate) fn ttl_at(&self, now: u64) -> Duration {
        Duration::from_millis(self.expires_at.saturating_sub(now))
    }

    /// Whole seconds since the response was produced, for the `age` header.
    pub(crate) fn age_at(&self, now: u64) -> u64 {
        now.saturating_sub(self.created_at) / 1000
    }

    pub(crate) fn is_fresh_at(&self, now: u64) -> bool {
        self.expires_at > now
    }

    /// Whether this entry may answer a request with these headers, given
    /// the headers the key covers.
    pub(crate) fn fits(&self, request: &HeaderMap, keyed: &[http::HeaderName]) -> bool {
        Vary::of(&self.headers, keyed).fits(self.info.vary, request)
    }
}

/// Wall-clock milliseconds since the Unix epoch: entries are shared across
/// processes, so their times are absolute.
pub(crate) fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
