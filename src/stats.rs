//! What the layer saved: the live counters and their snapshot, [`Stats`].

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

use crate::tenants::TenantStats;

/// Live counters, shared by the layer and every service it made.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) requests: AtomicU64,
    pub(crate) hits_l1: AtomicU64,
    pub(crate) hits_l2: AtomicU64,
    pub(crate) wait_timeouts: AtomicU64,
    pub(crate) bucket_hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) coalesced: AtomicU64,
    pub(crate) refreshes: AtomicU64,
    pub(crate) bypass_method: AtomicU64,
    pub(crate) bypass_no_store: AtomicU64,
    pub(crate) bypass_too_large: AtomicU64,
    pub(crate) bypass_no_key: AtomicU64,
    pub(crate) bad_requests: AtomicU64,
    pub(crate) upstream_calls: AtomicU64,
    pub(crate) upstream_errors: AtomicU64,
    pub(crate) stored: AtomicU64,
    pub(crate) bytes_saved: AtomicU64,
    pub(crate) tokens_saved: AtomicU64,
    pub(crate) micro_dollars_saved: AtomicU64,
    pub(crate) bypass_sampling: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) key_reused: AtomicU64,
    pub(crate) in_flight_conflicts: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub(crate) fn inc(counter: &AtomicU64) {
        Self::add(counter, 1);
    }

    /// `store` is the shared store's (errors, skipped, unreadable) counts.
    pub(crate) fn snapshot(&self, store: (u64, u64, u64)) -> Stats {
        let get = |c: &AtomicU64| c.load(Relaxed);
        let bypassed = Bypassed {
            method: get(&self.bypass_method),
            no_store: get(&self.bypass_no_store),
            too_large: get(&self.bypass_too_large),
            no_key: get(&self.bypass_no_key),
            sampling: get(&self.bypass_sampling),
        };
        let hits = Hits {
            l1: get(&self.hits_l1),
            l2: get(&self.hits_l2),
        };
        let coalesced = get(&self.coalesced);
        let misses = get(&self.misses);
        let answered = hits.total() + coalesced;
        let eligible = answered + misses + get(&self.refreshes);
        Stats {
            requests: get(&self.requests),
            hits,
            misses,
            coalesced,
            refreshes: get(&self.refreshes),
            bypassed,
            bad_requests: get(&self.bad_requests),
            upstream_calls: get(&self.upstream_calls),
            upstream_errors: get(&self.upstream_errors),
            stored: get(&self.stored),
            bytes_saved: get(&self.bytes_saved),
            tokens_saved: get(&self.tokens_saved),
            money_saved: Money::from_micro_dollars(get(&self.micro_dollars_saved)),
            rejected: Rejected {
                total: get(&self.rejected) + get(&self.key_reused) + get(&self.in_flight_conflicts),
                key_reused: get(&self.key_reused),
                in_flight: get(&self.in_flight_conflicts),
            },
            calls_saved: answered,
            wait_timeouts: get(&self.wait_timeouts),
            bucket_hits: get(&self.bucket_hits),
            store: StoreHealth {
                errors: store.0,
                skipped: store.1,
                unreadable: store.2,
            },
            hit_rate: if eligible == 0 {
                0.0
            } else {
                answered as f64 / eligible as f64
            },
            tenants: Vec::new(),
        }
    }
}

/// A snapshot of what one layer (and every service it made) has done.
///
/// Counters only grow; take two snapshots and subtract for a window. It
/// serialises (`serde`) to JSON for a dashboard.
///
/// # Examples
///
/// ```
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body_util::{BodyExt, Full};
/// use tower::{Service, ServiceBuilder, ServiceExt};
/// use tower_idempotency::{IdempotencyLayer, RequestBody};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let layer = IdempotencyLayer::new();
/// let mut service = ServiceBuilder::new()
///     .layer(layer.clone())
///     .service_fn(|_: Request<RequestBody<Full<Bytes>>>| async {
///         Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from("1234"))))
///     });
/// for _ in 0..3 {
///     let request = Request::post("/v1/embed").body(Full::new(Bytes::from("text")))?;
///     let response = service.ready().await?.call(request).await?;
///     response.into_body().collect().await?;
/// }
///
/// let stats = layer.stats();
/// assert_eq!(stats.requests, 3);
/// assert_eq!(stats.upstream_calls, 1);
/// assert_eq!(stats.calls_saved, 2);
/// assert_eq!(stats.bytes_saved, 8);
/// assert!((stats.hit_rate - 2.0 / 3.0).abs() < 1e-9);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Stats {
    /// Requests seen, whatever became of them.
    pub requests: u64,
    /// Requests answered from a stored entry.
    pub hits: Hits,
    /// Requests that found nothing and led an upstream call.
    pub misses: u64,
    /// Requests that shared the response of a concurrent identical request.
    pub coalesced: u64,
    /// Requests that skipped the look-up on the client's `no-cache`.
    pub refreshes: u64,
    /// Requests the layer let through untouched, by reason.
    pub bypassed: Bypassed,
    /// Requests answered 400 because their body could not be read.
    pub bad_requests: u64,
    /// Calls made to the inner service.
    pub upstream_calls: u64,
    /// Calls to the inner service that returned an error.
    pub upstream_errors: u64,
    /// Responses stored.
    pub stored: u64,
    /// Response body bytes served without an upstream call.
    pub bytes_saved: u64,
    /// Tokens (input and output) of the AI calls avoided, from the `usage`
    /// the upstream reported.
    pub tokens_saved: u64,
    /// Money the avoided calls would have cost, by the price table.
    pub money_saved: Money,
    /// Requests the layer answered with an error of its own (400, 409, 422).
    pub rejected: Rejected,
    /// Upstream calls avoided: hits plus coalesced followers.
    pub calls_saved: u64,
    /// Share of cacheable requests answered without an upstream call.
    pub hit_rate: f64,
    /// Waits for another instance's call that ran past the wait deadline.
    pub wait_timeouts: u64,
    /// Requests answered from one of their sample buckets picked at random,
    /// all of them being filled
    /// ([`SamplingPolicy::Bucket`](crate::builder::SamplingPolicy), or the
    /// bucket control header). Also counted among the hits or coalesced.
    pub bucket_hits: u64,
    /// How the shared store fared.
    pub store: StoreHealth,
    /// Per-tenant savings, most requests first, with
    /// [`Builder::count_tenants`](crate::builder::Builder::count_tenants);
    /// empty otherwise.
    pub tenants: Vec<TenantStats>,
}

/// How the shared store (Redis) fared, as seen from this process.
///
/// # Examples
///
/// ```
/// use tower_idempotency::IdempotencyLayer;
///
/// // Without a shared store there is nothing to fail.
/// let health = IdempotencyLayer::new().stats().store;
/// assert_eq!((health.errors, health.skipped, health.unreadable), (0, 0, 0));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct StoreHealth {
    /// Operations that failed or timed out (the requests went on without it).
    pub errors: u64,
    /// Operations skipped while the circuit breaker was open.
    pub skipped: u64,
    /// Stored values that could not be decoded (treated as misses).
    pub unreadable: u64,
}

/// Hits by tier.
///
/// # Examples
///
/// ```
/// use tower_idempotency::{IdempotencyLayer, Stats};
///
/// let stats: Stats = IdempotencyLayer::new().stats();
/// assert_eq!(stats.hits.total(), stats.hits.l1 + stats.hits.l2);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Hits {
    /// Answered from the in-process cache.
    pub l1: u64,
    /// Answered from the shared store.
    pub l2: u64,
}

impl Hits {
    /// All hits.
    pub fn total(&self) -> u64 {
        self.l1 + self.l2
    }
}

/// Requests let through untouched, by reason.
///
/// # Examples
///
/// ```
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body_util::Full;
/// use tower::{Service, ServiceBuilder, ServiceExt};
/// use tower_idempotency::{IdempotencyLayer, RequestBody};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let layer = IdempotencyLayer::new();
/// let mut service = ServiceBuilder::new()
///     .layer(layer.clone())
///     .service_fn(|_: Request<RequestBody<Full<Bytes>>>| async {
///         Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::new())))
///     });
/// let request = Request::post("/v1/chat")
///     .header("cache-control", "no-store")
///     .body(Full::new(Bytes::from("private question")))?;
/// service.ready().await?.call(request).await?;
///
/// let bypassed = layer.stats().bypassed;
/// assert_eq!((bypassed.no_store, bypassed.total()), (1, 1));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Bypassed {
    /// The method is not eligible.
    pub method: u64,
    /// The request said `Cache-Control: no-store` (or, with control headers,
    /// `x-idempotency-bypass: true`).
    pub no_store: u64,
    /// The request body was over the limit, or carried trailers.
    pub too_large: u64,
    /// The custom key function declined the request.
    pub no_key: u64,
    /// The sampling policy ruled the request nondeterministic.
    pub sampling: u64,
}

impl Bypassed {
    /// All bypasses.
    pub fn total(&self) -> u64 {
        self.method + self.no_store + self.too_large + self.no_key + self.sampling
    }
}

/// Requests the layer answered with an error of its own.
///
/// # Examples
///
/// ```
/// use bytes::Bytes;
/// use http::{Request, Response, StatusCode};
/// use http_body_util::{BodyExt, Full};
/// use tower::{Service, ServiceBuilder, ServiceExt};
/// use tower_idempotency::{IdempotencyLayer, KeyHeader, RequestBody};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let layer = IdempotencyLayer::builder()
///     .idempotency_key_header(KeyHeader::Optional)
///     .build();
/// let mut service = ServiceBuilder::new()
///     .layer(layer.clone())
///     .service_fn(|_: Request<RequestBody<Full<Bytes>>>| async {
///         Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from("ok"))))
///     });
/// for payload in ["first", "second"] {
///     let request = Request::post("/v1/transfers")
///         .header("idempotency-key", "k-1")
///         .body(Full::new(Bytes::from(payload)))?;
///     let response = service.ready().await?.call(request).await?;
///     if payload == "second" {
///         assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
///     }
///     response.into_body().collect().await?;
/// }
///
/// let rejected = layer.stats().rejected;
/// assert_eq!((rejected.key_reused, rejected.total), (1, 1));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Rejected {
    /// All of them (bad request bodies are counted apart, in `bad_requests`).
    pub total: u64,
    /// 422: an `Idempotency-Key` reused with another payload.
    pub key_reused: u64,
    /// 409: an identical request still in flight, in strict mode.
    pub in_flight: u64,
}

/// An amount of money, kept in micro-dollars so that sums are exact.
///
/// # Examples
///
/// ```
/// use tower_idempotency::Money;
///
/// let saved = Money::from_micro_dollars(2_500_000);
/// assert_eq!(saved.micro_dollars(), 2_500_000);
/// assert_eq!(saved.dollars(), 2.5);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Money {
    micro_dollars: u64,
}

impl Money {
    /// From micro-dollars (millionths of a dollar).
    pub const fn from_micro_dollars(micro_dollars: u64) -> Self {
        Self { micro_dollars }
    }

    /// In micro-dollars.
    pub const fn micro_dollars(self) -> u64 {
        self.micro_dollars
    }

    /// In dollars.
    pub fn dollars(self) -> f64 {
        self.micro_dollars as f64 / 1_000_000.0
    }
}

impl Serialize for Money {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut money = serializer.serialize_struct("Money", 2)?;
        money.serialize_field("dollars", &self.dollars())?;
        money.serialize_field("micro_dollars", &self.micro_dollars)?;
        money.end()
    }
}
