//! The names of our keys and channel in Redis, and the tags that go into
//! them. The layout is documented on [`RedisStore`](super::store::RedisStore).

use std::time::Duration;

use super::{scripts, store::Inner};
use crate::key::Key;

/// The names of one entry's keys.
pub(super) struct Names {
    /// The entry's hash.
    pub(super) entry: String,
    /// Its lease, in the same slot.
    pub(super) lease: String,
}

impl Inner {
    pub(super) fn names(&self, ns: &str, key: &Key) -> Names {
        let entry = format!("{}:{ns}:{{{key}}}", self.prefix);
        let lease = format!("{entry}:lease");
        Names { entry, lease }
    }

    /// The events channel.
    pub(super) fn channel(&self) -> String {
        format!("{}:events", self.prefix)
    }

    /// The hash of fleet counters.
    pub(super) fn stats_key(&self) -> String {
        format!("{}:stats", self.prefix)
    }
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

/// A name for this store in lease tokens and refresh messages: 12 hex
/// digits, different for every store made.
pub(super) fn instance_id() -> String {
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
pub(super) fn ttl_millis(ttl: Duration) -> u64 {
    millis(ttl).min(scripts::MAX_TTL_MS)
}

pub(super) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}
