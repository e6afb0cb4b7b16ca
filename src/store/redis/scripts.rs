//! The Lua scripts: each step that must be atomic is one round trip.

use std::sync::LazyLock;

use redis::Script;

/// Look up, or claim the lease: run when a plain `HGET` of the record (the
/// whole of a hit) found none, so it reads the entry again, atomically with
/// the claim (a record stored in between is a hit, counted here).
///
/// `KEYS[1]` the entry (a hash: `r` the record, `hits`, `last_hit_at`,
/// `created_at`), `KEYS[2]` the lease. `ARGV[1]` the caller's lease token,
/// `ARGV[2]` the lease in milliseconds, `ARGV[3]` now in milliseconds.
///
/// Returns `{1, record}` on a hit (and counts it), `{2}` when the caller now
/// holds the lease, `{3, pttl}` while someone else does. Anything under our
/// keys that is not what we wrote is treated as absent: an entry that is not
/// a hash is a miss, and a lease without an expiry (ours always have one) is
/// taken over, so garbage can never block a key.
pub(crate) const LOOKUP_SOURCE: &str = r"
local record = redis.pcall('HGET', KEYS[1], 'r')
if type(record) == 'string' then
  redis.call('HINCRBY', KEYS[1], 'hits', 1)
  redis.call('HSET', KEYS[1], 'last_hit_at', ARGV[3])
  return {1, record}
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {2}
end
local ttl = redis.call('PTTL', KEYS[2])
if ttl < 0 then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
  return {2}
end
return {3, ttl}
";

/// [`LOOKUP_SOURCE`], loaded once.
pub(super) static LOOKUP: LazyLock<Script> = LazyLock::new(|| Script::new(LOOKUP_SOURCE));

/// Store (optionally), release the lease (if still ours), and notify.
///
/// `KEYS[1]` the entry, `KEYS[2]` the lease. `ARGV[1]` the lease token (empty:
/// none held), `ARGV[2]` the encoded record (empty: nothing to store),
/// `ARGV[3]` its time to live in milliseconds, `ARGV[4]` its creation time,
/// `ARGV[5]` the events channel, `ARGV[6]` the message if the record is
/// stored, `ARGV[7]` the record's metadata (model, token usage) for
/// analytics, `ARGV[8]` the message if nothing is stored.
///
/// Every argument is checked before anything is written: a time to live
/// that is not a whole number of milliseconds within [`MAX_TTL_MS`] stores
/// nothing (Redis would refuse the expiry after the entry was written,
/// leaving it forever), but the lease is still released and the waiters
/// told. A record older than the one stored is not written (a leader's
/// store that reached Redis after a refresh made meanwhile; a store without
/// the lease that is older than the entry's): the newer stays, and the
/// waiters are told to look again. Returns 1 if the record was stored,
/// else 0.
pub(super) static STORE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"
local ttl = tonumber(ARGV[3])
local created = tonumber(ARGV[4])
local store = ARGV[2] ~= '' and ttl ~= nil and created ~= nil
  and ttl >= 1 and ttl <= {MAX_TTL_MS} and ttl == math.floor(ttl)
local newer = false
if store and ARGV[1] ~= '' then
  -- The lease was claimed because no record was there: one there now was
  -- stored meanwhile, without the lease (a refresh), and is newer.
  newer = type(redis.pcall('HGET', KEYS[1], 'r')) == 'string'
elseif store then
  local existing = redis.pcall('HGET', KEYS[1], 'created_at')
  newer = type(existing) == 'string' and tonumber(existing) ~= nil
    and tonumber(existing) > created
end
if store and not newer then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'r', ARGV[2], 'created_at', ARGV[4], 'hits', 0, 'meta', ARGV[7])
  redis.call('PEXPIRE', KEYS[1], ttl)
end
if ARGV[1] ~= '' and redis.pcall('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
end
if store then
  redis.call('PUBLISH', ARGV[5], ARGV[6])
  return newer and 0 or 1
end
redis.call('PUBLISH', ARGV[5], ARGV[8])
return 0
"
    ))
});

/// Release a lease that is still ours and tell the waiters. `KEYS[1]` the
/// lease, `ARGV[1]` the token, `ARGV[2]` the events channel, `ARGV[3]` the
/// message. Returns 1 if released.
///
/// Sent whole with `EVAL`, not by its digest: a release often follows a
/// request we stopped waiting for, and must not depend on a script cache
/// that a restarted server lost (the `NOSCRIPT` retry would come from a
/// caller already gone).
pub(super) const RELEASE_SOURCE: &str = r"
if redis.pcall('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  return 1
end
return 0
";

/// The longest time to live of an entry in Redis, in milliseconds (ten
/// years): longer ones are shortened to it, so that Redis always accepts the
/// expiry.
pub(super) const MAX_TTL_MS: u64 = 10 * 365 * 24 * 60 * 60 * 1000;

/// Extend the lease if it is still ours. `KEYS[1]` the lease, `ARGV[1]` the
/// token, `ARGV[2]` the lease in milliseconds. Returns 1 if renewed.
pub(super) static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.pcall('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
",
    )
});

/// Add hits counted in L1 to an entry that still exists. `KEYS[1]` the
/// entry, `ARGV[1]` the hits, `ARGV[2]` now in milliseconds.
pub(super) static ADD_HITS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('TYPE', KEYS[1]).ok == 'hash' then
  redis.call('HINCRBY', KEYS[1], 'hits', ARGV[1])
  redis.call('HSET', KEYS[1], 'last_hit_at', ARGV[2])
end
return 1
",
    )
});
