//! Per-tenant savings: who saved what, counted under a short keyed hash of
//! the credential the request carried, never the credential itself.
//!
//! A tenant's id is the first 8 bytes of SHA-256 over a secret and the
//! credential, as 16 hex digits. Without the secret it cannot be reversed
//! nor matched to a credential, and two deployments with different secrets
//! give the same credential different ids. The secret is random per process
//! unless [`Builder::tenant_secret`](crate::builder::Builder::tenant_secret)
//! sets one (instances that should agree on ids share it).
//!
//! Memory is bounded: at most `capacity` tenants are tracked; a new tenant
//! arriving when the table is full takes the place of the one with the
//! fewest requests, and inherits its count as its error bound (the
//! space-saving algorithm): a tenant with more than `1 / capacity` of the
//! requests is never lost to a crowd of light ones, and each count is off by
//! at most its `overcount`.

use std::{
    collections::{BTreeSet, HashMap},
    fmt,
    sync::{Mutex, PoisonError},
};

use http::{HeaderMap, HeaderName};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// The request headers that carry a credential, in the order they are read.
const CREDENTIALS: [&str; 5] = [
    "authorization",
    "x-api-key",
    "api-key",
    "x-goog-api-key",
    "cookie",
];

/// A tenant's id: a keyed hash of its credential.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct TenantId([u8; 8]);

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TenantId({self})")
    }
}

/// What one tenant saved, as [`Stats::tenants`](crate::stats::Stats::tenants)
/// lists it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct TenantStats {
    /// The tenant's id: 16 hex digits of a keyed hash of its credential.
    pub tenant: String,
    /// Requests counted for it.
    pub requests: u64,
    /// Upstream calls its requests made.
    pub upstream_calls: u64,
    /// Its requests answered without an upstream call (hits and coalesced).
    pub calls_saved: u64,
    /// Tokens of the calls it did not pay for.
    pub tokens_saved: u64,
    /// Money it did not spend, in millionths of a dollar.
    pub micro_dollars_saved: u64,
    /// How many of `requests` may belong to tenants it replaced in a full
    /// table (0 while the table has room): its true count is between
    /// `requests - overcount` and `requests`.
    pub overcount: u64,
}

impl TenantStats {
    /// A fleet row: counts in the order of the Redis hash's fields
    /// (requests, upstream calls, calls saved, tokens, micro-dollars). The
    /// fleet's table drops its lightest rows, so it tells no overcount.
    #[cfg(feature = "redis")]
    pub(crate) fn fleet(tenant: String, counts: [u64; 5]) -> Self {
        Self {
            tenant,
            requests: counts[0],
            upstream_calls: counts[1],
            calls_saved: counts[2],
            tokens_saved: counts[3],
            micro_dollars_saved: counts[4],
            overcount: 0,
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    requests: u64,
    upstream_calls: u64,
    calls_saved: u64,
    tokens_saved: u64,
    micro_dollars_saved: u64,
    overcount: u64,
}

/// The table of tenants, bounded.
pub(crate) struct Tenants {
    secret: [u8; 32],
    capacity: usize,
    table: Mutex<Table>,
}

/// The tenants' counts, and the same tenants ordered by requests, so that
/// the lightest is found in `O(log n)` when a newcomer needs its place: a
/// caller who sends every request under a fresh credential costs a few
/// tree operations under the lock, not a walk over the whole table.
#[derive(Default)]
struct Table {
    counts: HashMap<TenantId, Counts>,
    by_requests: BTreeSet<(u64, TenantId)>,
}

/// What became of one tenant's request.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Tally {
    /// It called upstream.
    Upstream,
    /// It was answered without a call: hit or coalesced.
    Saved { tokens: u64, micro_dollars: u64 },
}

impl Tenants {
    /// The most tenants a table may track.
    pub(crate) const MAX_CAPACITY: usize = 100_000;

    pub(crate) fn new(capacity: usize, secret: Option<[u8; 32]>) -> Self {
        let secret = secret.unwrap_or_else(|| {
            let mut secret = [0; 32];
            // Without OS randomness, a process-local fallback: ids are then
            // still not comparable across processes in practice.
            if getrandom::fill(&mut secret).is_err() {
                let fallback = std::collections::hash_map::RandomState::new();
                let seed = std::hash::BuildHasher::hash_one(&fallback, std::process::id());
                secret[..8].copy_from_slice(&seed.to_le_bytes());
            }
            secret
        });
        Self {
            secret,
            capacity: capacity.clamp(1, Self::MAX_CAPACITY),
            table: Mutex::new(Table::default()),
        }
    }

    /// The tenant a request belongs to: the first credential header present.
    /// `None` for a request without one.
    pub(crate) fn identify(&self, headers: &HeaderMap) -> Option<TenantId> {
        let (name, value) = CREDENTIALS
            .iter()
            .find_map(|name| Some((*name, headers.get(HeaderName::from_static(name))?)))?;
        let mut hasher = Sha256::new();
        hasher.update(self.secret);
        hasher.update((name.len() as u64).to_be_bytes());
        hasher.update(name.as_bytes());
        hasher.update(value.as_bytes());
        let digest = hasher.finalize();
        let mut id = [0; 8];
        id.copy_from_slice(&digest[..8]);
        Some(TenantId(id))
    }

    /// Counts one request of `tenant`. Every count saturates: the tokens
    /// and money come from the upstream's answer, which may say anything.
    pub(crate) fn count(&self, tenant: TenantId, tally: Tally) {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let Table {
            counts,
            by_requests,
        } = &mut *table;
        let mut entry = match counts.remove(&tenant) {
            Some(entry) => {
                by_requests.remove(&(entry.requests, tenant));
                entry
            }
            // Space-saving: when the table is full the newcomer replaces
            // the lightest tenant and starts from its count, which bounds
            // its error.
            None if counts.len() >= self.capacity => match by_requests.pop_first() {
                Some((requests, lightest)) => {
                    counts.remove(&lightest);
                    Counts {
                        requests,
                        overcount: requests,
                        ..Counts::default()
                    }
                }
                None => Counts::default(),
            },
            None => Counts::default(),
        };
        entry.requests = entry.requests.saturating_add(1);
        match tally {
            Tally::Upstream => entry.upstream_calls = entry.upstream_calls.saturating_add(1),
            Tally::Saved {
                tokens,
                micro_dollars,
            } => {
                entry.calls_saved = entry.calls_saved.saturating_add(1);
                entry.tokens_saved = entry.tokens_saved.saturating_add(tokens);
                entry.micro_dollars_saved = entry.micro_dollars_saved.saturating_add(micro_dollars);
            }
        }
        by_requests.insert((entry.requests, tenant));
        counts.insert(tenant, entry);
    }

    /// The tenants tracked, by requests, most first.
    pub(crate) fn snapshot(&self) -> Vec<TenantStats> {
        let table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<TenantStats> = table
            .counts
            .iter()
            .map(|(id, c)| TenantStats {
                tenant: id.to_string(),
                requests: c.requests,
                upstream_calls: c.upstream_calls,
                calls_saved: c.calls_saved,
                tokens_saved: c.tokens_saved,
                micro_dollars_saved: c.micro_dollars_saved,
                overcount: c.overcount,
            })
            .collect();
        drop(table);
        out.sort_by(|a, b| b.requests.cmp(&a.requests).then(a.tenant.cmp(&b.tenant)));
        out
    }
}

impl fmt::Debug for Tenants {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tenants")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(name, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn ids_are_keyed_short_and_never_the_credential() {
        let a = Tenants::new(10, Some([1; 32]));
        let b = Tenants::new(10, Some([2; 32]));
        let alice = headers("authorization", "Bearer sk-alice");
        let id = a.identify(&alice).unwrap();
        assert_eq!(id.to_string().len(), 16);
        assert!(!id.to_string().contains("alice"));
        assert_eq!(Some(id), a.identify(&alice), "stable under one secret");
        assert_ne!(
            Some(id),
            b.identify(&alice),
            "not comparable across secrets"
        );
        assert_ne!(
            Some(id),
            a.identify(&headers("authorization", "Bearer sk-bob"))
        );
        // The same value under another header is another credential.
        assert_ne!(
            Some(id),
            a.identify(&headers("x-api-key", "Bearer sk-alice"))
        );
        assert_eq!(a.identify(&HeaderMap::new()), None);
        // Random secrets: two layers disagree.
        let (r1, r2) = (Tenants::new(10, None), Tenants::new(10, None));
        assert_ne!(r1.identify(&alice), r2.identify(&alice));
    }

    #[test]
    fn counts_what_each_tenant_saved() {
        let tenants = Tenants::new(10, Some([0; 32]));
        let id = tenants.identify(&headers("x-api-key", "k")).unwrap();
        tenants.count(id, Tally::Upstream);
        tenants.count(
            id,
            Tally::Saved {
                tokens: 30,
                micro_dollars: 7,
            },
        );
        let snapshot = tenants.snapshot();
        assert_eq!(
            snapshot,
            vec![TenantStats {
                tenant: id.to_string(),
                requests: 2,
                upstream_calls: 1,
                calls_saved: 1,
                tokens_saved: 30,
                micro_dollars_saved: 7,
                overcount: 0,
            }]
        );
    }

    #[test]
    fn memory_is_bounded_and_heavy_tenants_survive_a_crowd() {
        let tenants = Tenants::new(8, Some([0; 32]));
        let heavy = tenants.identify(&headers("x-api-key", "heavy")).unwrap();
        for _ in 0..500 {
            tenants.count(heavy, Tally::Upstream);
        }
        // 2,500 requests in all: a tenant with more than 2500 / 8 of them
        // is never replaced.
        for i in 0..2_000 {
            let id = tenants
                .identify(&headers("x-api-key", &format!("light-{i}")))
                .unwrap();
            tenants.count(id, Tally::Upstream);
        }
        let snapshot = tenants.snapshot();
        assert_eq!(snapshot.len(), 8);
        assert_eq!(snapshot[0].tenant, heavy.to_string());
        assert_eq!(snapshot[0].requests, 500);
        assert_eq!(snapshot[0].overcount, 0);
        // Zero, garbage and the maximum are all bounded.
        assert_eq!(Tenants::new(0, None).capacity, 1);
        assert_eq!(
            Tenants::new(usize::MAX, None).capacity,
            Tenants::MAX_CAPACITY
        );
    }

    #[test]
    fn counts_saturate_whatever_the_upstream_reports() {
        let tenants = Tenants::new(10, Some([0; 32]));
        let id = tenants.identify(&headers("x-api-key", "k")).unwrap();
        let huge = Tally::Saved {
            tokens: u64::MAX,
            micro_dollars: u64::MAX,
        };
        tenants.count(id, huge);
        tenants.count(id, huge);
        let snapshot = tenants.snapshot();
        assert_eq!(snapshot[0].tokens_saved, u64::MAX);
        assert_eq!(snapshot[0].micro_dollars_saved, u64::MAX);
        assert_eq!(snapshot[0].calls_saved, 2);
    }

    #[test]
    fn a_newcomer_in_a_full_table_replaces_exactly_the_lightest() {
        let tenants = Tenants::new(1_000, Some([0; 32]));
        let id = |i: u64| TenantId(i.to_be_bytes());
        // Tenant i has i + 1 requests.
        for i in 0..1_000 {
            for _ in 0..=i {
                tenants.count(id(i), Tally::Upstream);
            }
        }
        // A crowd of fresh ids: each replaces the lightest, which is the
        // previous newcomer once the table's light end has risen.
        for i in 1_000..1_100 {
            tenants.count(id(i), Tally::Upstream);
            let table = tenants.table.lock().unwrap();
            assert_eq!(table.counts.len(), 1_000);
            assert_eq!(table.by_requests.len(), 1_000);
            assert!(table
                .by_requests
                .iter()
                .all(|(requests, id)| table.counts[id].requests == *requests));
        }
        let snapshot = tenants.snapshot();
        let min = snapshot.iter().map(|t| t.requests).min().unwrap();
        assert!(
            snapshot.iter().all(|t| t.requests >= min),
            "never more than one tenant under the rest"
        );
        // The heaviest were never touched.
        assert_eq!(snapshot[0].requests, 1_000);
        assert_eq!(snapshot[0].overcount, 0);
        assert_eq!(snapshot[0].tenant, id(999).to_string());
        // Each newcomer started from the count it replaced.
        let newcomer = snapshot
            .iter()
            .find(|t| t.tenant == id(1_099).to_string())
            .expect("the last newcomer is in the table");
        assert_eq!(newcomer.requests, newcomer.overcount + 1);
    }
}
