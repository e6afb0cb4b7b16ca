//! A fast keyed hasher for maps keyed by [`Key`](super::Key).
//!
//! Keys are SHA-256 output, so they need no mixing of their own; SipHash
//! (the standard maps' default) spent a large share of a miss hashing them
//! again, once per map and cache they go through. This hasher folds the
//! bytes in eight at a time with a multiply whose high and low halves are
//! xor-ed together, starting from a seed drawn once per process, so that a
//! client who can choose its requests (and so the digests) still cannot
//! predict which keys share a bucket.

use std::{
    collections::hash_map::RandomState,
    hash::{BuildHasher, Hasher},
    sync::OnceLock,
};

/// An odd constant with well spread bits (the fractional part of pi).
const MULTIPLIER: u64 = 0x243f_6a88_85a3_08d3;

/// Builds [`KeyHasher`]s from the process's seed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BuildKeyHasher {
    seed: u64,
}

impl Default for BuildKeyHasher {
    fn default() -> Self {
        static SEED: OnceLock<u64> = OnceLock::new();
        let seed = *SEED.get_or_init(|| RandomState::new().hash_one(0x5eed_u64) | 1);
        Self { seed }
    }
}

impl BuildHasher for BuildKeyHasher {
    type Hasher = KeyHasher;

    fn build_hasher(&self) -> KeyHasher {
        KeyHasher(self.seed)
    }
}

/// See the module docs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct KeyHasher(u64);

fn fold(a: u64, b: u64) -> u64 {
    let product = u128::from(a) * u128::from(b);
    (product as u64) ^ ((product >> 64) as u64)
}

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let word = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
            self.write_u64(word);
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            // The length keeps `[1]` and `[1, 0]` apart.
            self.write_u64(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 59));
        }
    }

    fn write_u64(&mut self, word: u64) {
        self.0 = fold(self.0 ^ word, MULTIPLIER);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn finish(&self) -> u64 {
        // One more round, so the last word's bits reach the low bits that
        // pick a bucket.
        fold(self.0, MULTIPLIER ^ self.0.rotate_left(32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Key;

    #[test]
    fn equal_keys_hash_alike_and_different_ones_spread() {
        let build = BuildKeyHasher::default();
        let key = |n: u8| {
            let mut bytes = [0u8; 32];
            bytes[31] = n;
            Key::from_bytes(bytes)
        };
        assert_eq!(build.hash_one(key(1)), build.hash_one(key(1)));
        // Keys that differ only in their last byte still land in different
        // buckets of a small table.
        let buckets: std::collections::HashSet<u64> =
            (0..=255).map(|n| build.hash_one(key(n)) & 1023).collect();
        assert!(buckets.len() > 200, "{} buckets of 256 keys", buckets.len());
    }
}
