//! Circuit breakers: after repeated failures, stop asking Redis for a while.
//!
//! A single node has one breaker. A cluster has one per range of slots, so a
//! failing node stops only the keys it owns: the 16384 slots fall into
//! [`BUCKETS`] ranges of [`SLOTS_PER_BUCKET`], small enough that a range lies
//! within one node's share in all but a few boundary cases, without knowing
//! the cluster's topology. Operations that name no key (a publish, a scan)
//! have a breaker of their own.

use std::time::Duration;

use super::super::breaker::Breaker;

/// How many slot ranges of a cluster have a breaker of their own.
pub(super) const BUCKETS: usize = 1024;
/// Slots per range: 16384 slots in [`BUCKETS`] ranges.
pub(super) const SLOTS_PER_BUCKET: u16 = 16;

/// The breakers of one store: one for a single node; for a cluster, one per
/// range of slots and one for operations that name no key.
pub(super) enum Breakers {
    Single(Breaker),
    Slots {
        ranges: Box<[Breaker]>,
        unkeyed: Breaker,
    },
}

impl Breakers {
    pub(super) fn single(threshold: u32, cooldown: Duration) -> Self {
        Self::Single(Breaker::new(threshold, cooldown))
    }

    pub(super) fn per_slot_range(threshold: u32, cooldown: Duration) -> Self {
        Self::Slots {
            ranges: (0..BUCKETS)
                .map(|_| Breaker::new(threshold, cooldown))
                .collect(),
            unkeyed: Breaker::new(threshold, cooldown),
        }
    }

    /// The breaker guarding operations on the Redis key `name` (`None`: an
    /// operation that names no key).
    pub(super) fn for_key(&self, name: Option<&str>) -> &Breaker {
        match (self, name) {
            (Self::Single(breaker), _) => breaker,
            (Self::Slots { unkeyed, .. }, None) => unkeyed,
            (Self::Slots { ranges, .. }, Some(name)) => {
                &ranges[usize::from(slot(name.as_bytes()) / SLOTS_PER_BUCKET)]
            }
        }
    }
}

/// The Redis Cluster slot of a key: CRC16 (XMODEM) of its hash tag, or of
/// the whole key when it has none, modulo 16384.
pub(super) fn slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(tagged) % 16384
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis_cluster() {
        // Values from `CLUSTER KEYSLOT`.
        assert_eq!(slot(b"123456789"), 12739);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}".as_slice()));
        assert_ne!(slot(b"foo{}{bar}"), slot(b"bar"), "an empty tag is no tag");
    }
}
