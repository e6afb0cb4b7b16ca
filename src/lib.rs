//! Stop paying twice for the same expensive call.
//!
//! [`IdempotencyLayer`] wraps any `tower::Service<http::Request<B>>` (an axum
//! router, a hyper server or client). It fingerprints each request by its
//! content (SHA-256 over method, path, sorted query, the headers that tell
//! callers apart, and the body, with JSON canonicalised), answers repeats
//! from an in-process cache, lets exactly one of many concurrent duplicates
//! reach the inner service while the others share its response as it
//! streams, and replays the stored response byte for byte.
//!
//! # Examples
//!
//! ```
//! use std::sync::{atomic::{AtomicUsize, Ordering}, Arc};
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tower::{ServiceBuilder, ServiceExt, Service};
//! use tower_idempotency::{IdempotencyLayer, RequestBody};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let calls = Arc::new(AtomicUsize::new(0));
//! let counter = Arc::clone(&calls);
//! let mut service = ServiceBuilder::new()
//!     .layer(IdempotencyLayer::new())
//!     .service_fn(move |_: Request<RequestBody<Full<Bytes>>>| {
//!         counter.fetch_add(1, Ordering::SeqCst);
//!         async { Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from("an expensive answer")))) }
//!     });
//!
//! for _ in 0..3 {
//!     let request = Request::post("/v1/describe").body(Full::new(Bytes::from("same photo")))?;
//!     let response = service.ready().await?.call(request).await?;
//!     assert_eq!(response.into_body().collect().await?.to_bytes(), "an expensive answer");
//! }
//! assert_eq!(calls.load(Ordering::SeqCst), 1);
//! # Ok(())
//! # }
//! ```
//!
//! With axum, add it to a router like any other layer:
//!
//! ```
//! use axum::{routing::post, Router};
//! use tower_idempotency::IdempotencyLayer;
//!
//! let app: Router = Router::new()
//!     .route("/v1/chat/completions", post(|body: String| async move { body }))
//!     .layer(IdempotencyLayer::new());
//! ```
//!
//! # What is stored, and what is replayed
//!
//! Only complete 2xx responses are stored by default ([`Builder::store_if`]
//! widens this); a response with `Cache-Control: no-store` or `private`, or
//! `Vary: *`, never is, and is not shared with concurrent duplicates either:
//! each gets its own answer. A response whose `Vary` names request headers
//! outside the key is stored with a digest of the leader's values of them,
//! and replayed (or shared) only to requests with the same values; another
//! value is a miss whose answer replaces the entry. Hop-by-hop headers and
//! `set-cookie` are stripped from what is stored and shared. A replay carries the original status, headers, body and
//! trailers, plus `age` and an RFC 9211 `cache-status` member:
//!
//! | outcome | `cache-status` |
//! |---|---|
//! | replayed from storage | `tower-idempotency; hit; ttl=<seconds left>` |
//! | the one request that called upstream | `tower-idempotency; fwd=uri-miss; stored` (`stored` only when it will be) |
//! | a concurrent duplicate sharing it | `tower-idempotency; fwd=uri-miss; collapsed` |
//! | the client sent `Cache-Control: no-cache` | `tower-idempotency; fwd=request; stored` |
//! | skipped by policy (`no-store`, body too large) | `tower-idempotency; fwd=bypass` |
//! | method not eligible | `tower-idempotency; fwd=method` |
//!
//! `stored` on a leader's response is a promise made from its head: the
//! policy allows storing it, and its length is known (`Content-Length`, or an
//! in-process body's exact size hint), within the response limit and
//! reserved in the recording budget ([`Builder::max_recording_bytes`]). Only
//! a body that then fails breaks it. A response of unknown length (chunked,
//! a stream) carries no `stored`, though it is stored if it completes within
//! the limit and the budget.
//!
//! # Concurrent duplicates
//!
//! Among concurrent identical requests exactly one (the leader) calls the
//! inner service. The others follow it and receive the same status, headers
//! and bytes, streamed live as the leader's chunks arrive; one that joins late
//! first gets the chunks so far. Followers receive whatever the leader
//! received, 5xx included: a retry storm against a failing upstream costs one
//! call, not one per retry. Such a response is not stored, so the next
//! request after it calls upstream again.
//!
//! The upstream call runs in its own task, so it completes and is stored even
//! if the leader's caller goes away: it has been paid for. If the inner
//! service returns an error, the leader's caller gets it and every follower
//! goes through itself at once, as it would have without the layer: failover
//! is never serialised. If the call panics (the panic reaches the leader's
//! caller), or the leader's caller goes away before the head where the call
//! is tied to it (the reqwest middleware), one follower takes over as the
//! new leader. Nobody waits forever: a follower waits at most
//! [`Builder::wait_timeout`], then goes through itself (or is answered 409
//! in strict mode); the leader's call gets [`Builder::upstream_timeout`] for
//! its head (past it, its caller is answered 504) and
//! [`Builder::idle_timeout`] between body frames (past it, the body fails
//! for every reader and nothing is stored). A body that fails mid-stream
//! fails for every reader that was streaming it.
//!
//! This needs a Tokio runtime, with its timer enabled (the bounds above).
//!
//! # Sharing across instances
//!
//! With the `redis` feature (on by default), `Builder::redis` adds a shared
//! L2: see `RedisStore`. A duplicate arriving at any instance is answered
//! from Redis, concurrent duplicates spread over instances cost one upstream
//! call (a lease, and a notification that wakes the waiters), and a Redis
//! outage only makes requests slower: every operation has a timeout and a
//! circuit breaker.
//!
//! # Bodies
//!
//! The request body is buffered up to [`Builder::max_request_body`] to build
//! the key. A larger body is not an error: what was read is chained back in
//! front of the rest and the request reaches the inner service untouched and
//! uncached. A body the client fails to send is answered 400, with an
//! [`Error`] in the response extensions. The inner service therefore receives
//! a [`RequestBody<B>`] around the original body type.
//!
//! # How a request flows
//!
//! Each step of a request's path has one home in the source; the file list
//! reads in the order a request meets them. The Tower service and the
//! reqwest middleware are thin adapters; the engine decides.
//!
//! ```text
//! service.rs / client.rs ─► policy ─► body ─► engine/key ─► L1 ─► flight ─► L2 ─► upstream ─► tee
//!   (adapters)             skip/reject  buffer    key      hit?   join/lead   hit/lease/wait        record, share
//!                                                                                          └─► respond (replay, live, reject)
//! ```
//!
//! | module | what it owns |
//! |---|---|
//! | `layer.rs`, `builder.rs` | [`IdempotencyLayer`] and its [`Builder`]: every setting, with [`KeyHeader`] and `SamplingPolicy` beside it |
//! | `service.rs`, `future.rs` | [`Idempotency`], the Tower adapter, and its [`ResponseFuture`] |
//! | `client.rs` | `IdempotencyMiddleware`, the reqwest adapter (feature `reqwest`) |
//! | `policy/` | the policy step: `request.rs` (control headers, which requests skip the layer), `cache_control.rs` (directives), `response.rs` (what may be stored and shared, [`StorePredicate`]), `hop_by_hop.rs` ([`strip_hop_by_hop`]) |
//! | `body/` | `request.rs` buffers the request body up to the limit without losing a byte ([`RequestBody`]); `response.rs` is the body the caller reads ([`ResponseBody`]) |
//! | `key/` | the fingerprint: method, authority, path, sorted query, vary headers, the body ([`Key`], [`MakeKey`], [`NormalizeBody`]); `key/json/` canonicalises JSON in two passes |
//! | `engine/mod.rs` | the engine: its configuration and `handle`, the request's path in order |
//! | `engine/key.rs` | the key step: content key, or the `Idempotency-Key` and its payload's fingerprint |
//! | `engine/lookup.rs` | L1, then the flight map: follow a leader or lead |
//! | `engine/shared.rs` | the L2 step: a hit, the lease, or waiting for another instance |
//! | `engine/upstream.rs` | the pending upstream call, forwarding, and the leader's task |
//! | `engine/tee.rs` | the leader's response streams to every reader while it is recorded, then stored |
//! | `engine/respond.rs` | building the caller's response: replay, live view, problem response, `cache-status` |
//! | `engine/observe.rs`, `engine/ai.rs` | one `observe(outcome)` for counters, metrics and span; the `ai` feature's one seam |
//! | `flight/` | single flight in one process: the map (`mod.rs`), one flight (`state.rs`), its `leader.rs`, each `reader.rs`, who drives the recording (`drive.rs`), the recording `budget.rs` |
//! | `record/` | the stored response (`mod.rs`), its binary form (`codec.rs`), its `Vary` (`vary.rs`) |
//! | `store/` | L1 (`memory.rs`, moka), the engine's view of the L2 (`l2.rs`), invalidations to L1 (`invalidation.rs`), `redis/` and `sqlite/` |
//! | `store/redis/` | one file per concern: `store.rs`, `builder.rs`, `lookup.rs`, `lease.rs`, `waiters.rs`, `pubsub.rs`, `counters.rs`, `admin.rs`, `cluster.rs`, `scripts.rs`, `breaker.rs`; `stream/` streams a leader's answer live to waiters on other instances, once one asks |
//! | `stats.rs`, `telemetry.rs` | [`Stats`] and the `metrics` facade |
//! | `error.rs`, `cache_status.rs`, `idempotency_key.rs` | the layer's own failures ([`Error`]), the RFC 9211 member, the `Idempotency-Key` header and RFC 9457 problems |

#![warn(missing_docs)]
#![deny(unsafe_code)]
#![deny(rustdoc::broken_intra_doc_links)]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

// The README's examples compile as doc-tests.
#[cfg(all(doctest, feature = "redis", feature = "reqwest", feature = "sqlite"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

#[doc(hidden)]
#[path = "fuzz.rs"]
pub mod __fuzz;
#[cfg(feature = "ai")]
pub mod ai;
mod body;
mod builder;
mod cache_status;
#[cfg(feature = "reqwest")]
mod client;
mod engine;
mod error;
mod flight;
mod future;
pub mod idempotency_key;
mod key;
mod layer;
mod policy;
mod record;
mod service;
mod stats;
mod store;
mod telemetry;
mod tenants;
#[cfg(test)]
mod test_support;

pub use body::{RequestBody, ResponseBody};
#[cfg(feature = "ai")]
pub use builder::SamplingPolicy;
pub use builder::{Builder, KeyHeader};
pub use cache_status::CACHE_STATUS;
#[cfg(feature = "reqwest")]
pub use client::IdempotencyMiddleware;
pub use error::{BoxError, Error, ErrorKind};
pub use future::ResponseFuture;
pub use key::{Key, MakeKey, NormalizeBody, TextNormalizer};
pub use layer::IdempotencyLayer;
pub use policy::{strip_hop_by_hop, StorePredicate, Successful};
pub use service::Idempotency;
pub use stats::{Bypassed, Hits, Money, Rejected, Stats, StoreHealth};
#[cfg(feature = "redis")]
pub use store::redis::{
    EntryStats, FleetStats, RedisStore, RedisStoreBuilder, StoreError, TopEntry,
};
#[cfg(feature = "sqlite")]
pub use store::sqlite::{SqliteError, SqliteStore, SqliteStoreBuilder};
pub use tenants::TenantStats;
