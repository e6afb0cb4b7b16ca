//! The count of a key's requests for sample buckets, shared by every
//! instance: one `INCR` (and its expiry) in the entry's slot.

use std::{sync::LazyLock, time::Duration};

use redis::Script;

use super::{keys::ttl_millis, store::RedisStore};
use crate::key::Key;

/// `KEYS[1]` the count, `ARGV[1]` its time to live in milliseconds: the
/// count after this request. A count without an expiry (not ours) gets one.
static NEXT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local count = redis.call('INCR', KEYS[1])
if redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return count
",
    )
});

impl RedisStore {
    /// The count of `key`'s requests, this one included, or `None` when
    /// Redis cannot say (the caller counts locally then).
    pub(crate) async fn bucket_count(&self, ns: &str, key: &Key, ttl: Duration) -> Option<u64> {
        let inner = &self.inner;
        let name = format!("{}:buckets", inner.names(ns, key).entry);
        let mut conn = inner.conn.clone();
        let mut invocation = NEXT.prepare_invoke();
        invocation.key(&name).arg(ttl_millis(ttl));
        let count: i64 = inner
            .run(
                Some(&name),
                inner.settings.timeout,
                invocation.invoke_async(&mut conn),
            )
            .await
            .ok()?;
        u64::try_from(count).ok().filter(|count| *count > 0)
    }
}
