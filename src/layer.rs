//! [`IdempotencyLayer`]: the Tower layer, and what it tells about the
//! cache it holds (statistics, keys, purges).

use std::sync::Arc;

use tower_layer::Layer;

use crate::{
    builder::Builder,
    engine::{Config, Engine},
    key::Key,
    service::Idempotency,
    stats::Stats,
};

/// Applies [`Idempotency`] to a service.
///
/// `IdempotencyLayer::new()` needs no configuration: an in-process cache of
/// 64 MiB, a one-hour TTL, GET and POST eligible, 16 MiB body limits, 256 MiB
/// for the responses being recorded at once, and upstream calls bounded at 10
/// minutes to their head and 5 minutes of silence between frames. Use
/// [`IdempotencyLayer::builder`] to change any of it.
///
/// Clones share one cache, one flight map and one set of statistics: build
/// the layer once and apply it wherever requests should be deduplicated
/// together.
///
/// # Examples
///
/// Two services made by clones of one layer share their answers:
///
/// ```
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body_util::{BodyExt, Full};
/// use tower::{service_fn, Layer, Service, ServiceExt};
/// use tower_idempotency::{IdempotencyLayer, RequestBody, CACHE_STATUS};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let layer = IdempotencyLayer::new();
/// let handler = |_: Request<RequestBody<Full<Bytes>>>| async {
///     Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from("42"))))
/// };
/// let mut first = layer.clone().layer(service_fn(handler));
/// let mut second = layer.layer(service_fn(handler));
///
/// let ask = || Request::post("/v1/answer").body(Full::new(Bytes::from("the question")));
/// let fresh = first.ready().await?.call(ask()?).await?;
/// assert_eq!(fresh.headers()[CACHE_STATUS], "tower-idempotency; fwd=uri-miss; stored");
/// fresh.into_body().collect().await?;
///
/// let replayed = second.ready().await?.call(ask()?).await?;
/// assert!(replayed.headers()[CACHE_STATUS].to_str()?.starts_with("tower-idempotency; hit"));
/// assert_eq!(replayed.into_body().collect().await?.to_bytes(), "42");
/// assert_eq!(layer.stats().hits.l1, 1);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct IdempotencyLayer {
    engine: Arc<Engine>,
}

impl IdempotencyLayer {
    /// The layer [`Builder::build`] makes.
    pub(crate) fn with_config(config: Config) -> Self {
        Self {
            engine: Arc::new(Engine::new(config)),
        }
    }

    #[cfg(feature = "reqwest")]
    pub(crate) fn engine(&self) -> Arc<Engine> {
        Arc::clone(&self.engine)
    }

    /// A layer with the default configuration.
    pub fn new() -> Self {
        Builder::default().build()
    }

    /// Starts configuring a layer.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// What the layer has done so far, across every service it made.
    pub fn stats(&self) -> Stats {
        self.engine.stats()
    }

    /// Upstream calls in progress (flights). Zero when the layer is idle.
    pub fn in_flight(&self) -> usize {
        self.engine.flights_in_progress()
    }

    /// Bytes of the recording budget in use, for tests.
    #[doc(hidden)]
    pub fn recording_bytes(&self) -> u64 {
        self.engine.recording_bytes()
    }

    /// Entries in the in-process cache and the bytes they weigh.
    pub async fn l1_usage(&self) -> (u64, u64) {
        self.engine.l1().usage().await
    }

    /// The key this layer stores a request with this head and body under, or
    /// `None` when it stores nothing for it (a custom key function declines
    /// it, or in `Idempotency-Key` mode the header is missing where required,
    /// or malformed). In `Idempotency-Key` mode it is the key the header names.
    /// With the [control headers](Builder::control_headers) on, it is the key
    /// in the namespace the head's `x-idempotency-namespace` chose (forget it
    /// with [`purge_in`](Self::purge_in)). Useful to [`purge`](Self::purge)
    /// the entry of a known request.
    pub fn key_for(&self, head: &http::request::Parts, body: &[u8]) -> Option<Key> {
        self.engine.key(head, body)
    }

    /// Forgets one stored entry, here and, with Redis, everywhere: the entry
    /// is deleted from Redis and every instance evicts it from its L1. The
    /// key of a response the layer answered is in that response's
    /// extensions.
    pub async fn purge(&self, key: &Key) {
        self.engine.purge(None, key).await;
    }

    /// [`purge`](Self::purge), for an entry stored under another namespace
    /// (one chosen per request with `x-idempotency-namespace`).
    pub async fn purge_in(&self, namespace: &str, key: &Key) {
        self.engine.purge(Some(namespace), key).await;
    }

    /// Forgets every entry of a namespace (the seed's "the model changed"):
    /// deleted from Redis, and every instance's L1 is cleared. Without Redis,
    /// clears this layer's L1.
    pub async fn purge_namespace(&self, namespace: &str) {
        self.engine.purge_namespace(namespace).await;
    }

    /// Whether this layer's Redis answers, and how long one `PING` took; `None`
    /// without Redis. For health checks: it asks nothing of other instances.
    #[cfg(feature = "redis")]
    pub async fn ping_redis(
        &self,
    ) -> Option<Result<std::time::Duration, crate::store::redis::StoreError>> {
        let redis = self.engine.l2().redis()?;
        Some(redis.ping().await)
    }

    /// Totals of every instance sharing this layer's Redis, if it has one.
    #[cfg(feature = "redis")]
    pub async fn fleet_stats(
        &self,
    ) -> Option<Result<crate::store::redis::FleetStats, crate::store::redis::StoreError>> {
        match self.engine.l2().redis() {
            Some(redis) => Some(redis.fleet_stats().await),
            None => None,
        }
    }

    /// The `n` entries of this layer's namespace replayed most often, from
    /// Redis (the whole fleet's hits), if the layer has it.
    #[cfg(feature = "redis")]
    pub async fn top_entries(
        &self,
        n: usize,
    ) -> Option<Result<Vec<crate::store::redis::TopEntry>, crate::store::redis::StoreError>> {
        let redis = self.engine.l2().redis()?;
        Some(redis.top_entries(self.engine.namespace(), n).await)
    }

    /// Forgets every stored entry in this process's in-process cache.
    pub fn clear(&self) {
        self.engine.l1().clear();
    }
}

impl Default for IdempotencyLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Layer<S> for IdempotencyLayer {
    type Service = Idempotency<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Idempotency::new(inner, Arc::clone(&self.engine))
    }
}

impl std::fmt::Debug for IdempotencyLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotencyLayer").finish_non_exhaustive()
    }
}
