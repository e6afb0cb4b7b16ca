//! [`Builder`], which configures an [`IdempotencyLayer`], and its option
//! types [`KeyHeader`] and [`SamplingPolicy`].

use std::{sync::Arc, time::Duration};

use http::{HeaderName, Method};

use crate::{
    engine::Config,
    key::{BodyMode, IgnoreFields, MakeKey, NormalizeBody},
    layer::IdempotencyLayer,
    policy::StorePredicate,
};

/// Configures an [`IdempotencyLayer`].
///
/// Every setter takes and returns the builder; [`build`](Self::build) makes
/// the layer. Durations out of bounds are clamped when it is built.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use tower_idempotency::IdempotencyLayer;
///
/// let layer = IdempotencyLayer::builder()
///     .ttl(Duration::from_secs(300))
///     .namespace("gpt-4o-2024-08-06")
///     .l1_capacity(256 * 1024 * 1024)
///     .ignore_json_fields(["user", "metadata.request_id"])
///     .build();
/// # let _ = layer;
/// ```
#[derive(Default)]
#[must_use]
pub struct Builder {
    config: Config,
}

impl Builder {
    /// The ceiling of [`max_ttl`](Self::max_ttl): one year. Every entry
    /// expires, and expiry times stay far from any overflow.
    pub const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 60 * 60);

    /// The ceiling of [`wait_timeout`](Self::wait_timeout): one day, so that
    /// a deadline computed from it never overflows.
    pub const MAX_WAIT_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

    /// How long a stored response is replayed. Default: one hour. Clamped to
    /// [`max_ttl`](Self::max_ttl) when the layer is built; zero stores
    /// nothing.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.config.ttl = ttl;
        self
    }

    /// The longest a response may be kept: [`ttl`](Self::ttl) is clamped to
    /// it, and an `x-idempotency-ttl` above it is answered 400. Default: 30
    /// days, far beyond the retry windows idempotency is for (Stripe keeps
    /// keys 24 hours) while keeping every entry bounded in time. At most
    /// [`MAX_TTL`](Self::MAX_TTL); a larger value is clamped to it.
    pub fn max_ttl(mut self, max_ttl: Duration) -> Self {
        self.config.max_ttl = max_ttl;
        self
    }

    /// Byte budget of the in-process cache, counting bodies and headers.
    /// Default: 64 MiB.
    pub fn l1_capacity(mut self, bytes: u64) -> Self {
        self.config.l1_capacity = bytes;
        self
    }

    /// Largest request body read to build a key. A larger body passes through
    /// untouched and uncached. Default: 16 MiB.
    pub fn max_request_body(mut self, bytes: usize) -> Self {
        self.config.max_request_body = bytes;
        self
    }

    /// Largest response body recorded. A larger one still reaches every
    /// caller in full, but is not stored. Default: 16 MiB.
    pub fn max_response_body(mut self, bytes: usize) -> Self {
        self.config.max_response_body = bytes;
        self
    }

    /// Goes into every key: change it (a model version, a prompt revision) to
    /// start afresh without deleting anything. Default: empty.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.config.key.namespace = namespace.into();
        self
    }

    /// Request headers whose values go into the key, replacing the defaults:
    /// `authorization`, `cookie`, `content-type`, `accept`, `accept-encoding`,
    /// and the AI providers' credential, account and version headers
    /// `x-api-key`, `api-key`, `x-goog-api-key`, `x-goog-user-project`,
    /// `anthropic-version`, `anthropic-beta`, `openai-organization`,
    /// `openai-project` and `openai-beta`. Leaving out the credential headers lets different
    /// callers share entries: do so only when responses do not depend on who
    /// asks.
    pub fn vary_headers<I>(mut self, headers: I) -> Self
    where
        I: IntoIterator<Item = HeaderName>,
    {
        self.config.key.vary = headers.into_iter().collect();
        self
    }

    /// Whether the authority a request is addressed to (the URI's, else the
    /// `Host` header's) is in the key. Default: on, so that virtual hosts
    /// served by one application never share an entry. Turn it off where the
    /// authority names this server rather than what is asked, as in a
    /// reverse proxy to one upstream whose instances are reached at
    /// different addresses, so that they share entries.
    pub fn key_authority(mut self, enabled: bool) -> Self {
        self.config.key.authority = enabled;
        self
    }

    /// Adds one header to the vary headers.
    pub fn vary_header(mut self, header: HeaderName) -> Self {
        if !self.config.key.vary.contains(&header) {
            self.config.key.vary.push(header);
        }
        self
    }

    /// The methods that are looked up and stored. Default: GET and POST.
    pub fn methods<I>(mut self, methods: I) -> Self
    where
        I: IntoIterator<Item = Method>,
    {
        self.config.methods = methods.into_iter().collect();
        self
    }

    /// Decides which complete responses are stored. Default:
    /// [`Successful`](crate::Successful) (2xx). Responses marked
    /// `Cache-Control: no-store` or `private` are never stored.
    pub fn store_if(mut self, predicate: impl StorePredicate) -> Self {
        self.config.store_if = Arc::new(predicate);
        self
    }

    /// JSON object fields (dotted paths) left out of the key, such as a
    /// per-request `user` or `metadata.request_id`.
    pub fn ignore_json_fields<I, S>(mut self, paths: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.config.key.body = BodyMode::Json(IgnoreFields::new(paths));
        self
    }

    /// Hashes bodies byte for byte, without canonicalising JSON.
    pub fn raw_body(mut self) -> Self {
        self.config.key.body = BodyMode::Raw;
        self
    }

    /// Rewrites bodies before hashing, in place of JSON canonicalisation;
    /// [`TextNormalizer`](crate::TextNormalizer) is a ready one.
    pub fn normalize_body(mut self, normalizer: impl NormalizeBody) -> Self {
        self.config.key.body = BodyMode::Normalize(Arc::new(normalizer));
        self
    }

    /// Supplies the whole key material; see [`MakeKey`].
    pub fn key_fn(mut self, make_key: impl MakeKey) -> Self {
        self.config.key.custom = Some(Arc::new(make_key));
        self
    }

    /// Whether responses carry a `Cache-Status` header. Default: on. Turn it
    /// off to keep clients from learning what other clients asked.
    pub fn cache_status_header(mut self, enabled: bool) -> Self {
        self.config.cache_status = enabled;
        self
    }

    /// Shares entries, and upstream calls, with every instance using the same
    /// Redis (or Redis Cluster). See [`RedisStore`](crate::RedisStore).
    ///
    /// A layer has one L2: this replaces a [`sqlite`](Self::sqlite) store
    /// set before.
    #[cfg(feature = "redis")]
    pub fn redis(mut self, store: crate::store::redis::RedisStore) -> Self {
        self.config.l2 = crate::store::Backend::Redis(store);
        self
    }

    /// Keeps entries in a SQLite file, across restarts and shared by the
    /// processes of one machine. See [`SqliteStore`](crate::SqliteStore).
    ///
    /// A layer has one L2: this replaces a [`redis`](Self::redis) store set
    /// before.
    #[cfg(feature = "sqlite")]
    pub fn sqlite(mut self, store: crate::store::sqlite::SqliteStore) -> Self {
        self.config.l2 = crate::store::Backend::Sqlite(store);
        self
    }

    /// How long a request waits for an identical one in flight, in this
    /// process or on another instance, before it goes through itself (or,
    /// in strict mode, is answered 409). Default: 60 s. `Duration::ZERO`
    /// waits only for an answer already there. Clamped to
    /// [`MAX_WAIT_TIMEOUT`](Self::MAX_WAIT_TIMEOUT) (the leader's own bounds,
    /// [`upstream_timeout`](Self::upstream_timeout) and
    /// [`idle_timeout`](Self::idle_timeout), apply as well).
    pub fn wait_timeout(mut self, timeout: Duration) -> Self {
        self.config.wait_timeout = timeout;
        self
    }

    /// How long the leader's call may take to produce its response head.
    /// Past it the call is abandoned: its caller is answered 504 Gateway
    /// Timeout (with an [`Error`](crate::Error) of kind
    /// [`UpstreamTimeout`](crate::ErrorKind::UpstreamTimeout) in the
    /// extensions), the requests waiting on it go through themselves, and
    /// the claim on the key is released. Default: 10 minutes, room for the
    /// slowest reasoning models, which may think for minutes before they
    /// answer. `Duration::ZERO` gives up on any call not ready at once;
    /// `Duration::MAX` means no bound.
    pub fn upstream_timeout(mut self, timeout: Duration) -> Self {
        self.config.upstream_timeout = timeout;
        self
    }

    /// How long the leader's response body may stay silent between two
    /// frames. Past it the body ends with an error for every reader, nothing
    /// is stored and the claim on the key is released. Default: 5 minutes,
    /// far above the pauses of a streamed generation. `Duration::MAX` means
    /// no bound. It is also how long a response too large to record waits
    /// for its slowest readers to make room: past it they are dropped (their
    /// bodies fail) and the others go on.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.config.idle_timeout = timeout;
        self
    }

    /// Byte budget shared by every response being recorded at once by this
    /// layer. Past it, new chunks are no longer recorded: the responses
    /// still stream whole to their callers, but are not stored. Bytes return
    /// to the budget when a recording ends. Default: 256 MiB, sixteen
    /// recordings of the default response limit at once: a burst of large
    /// answers cannot hold more memory than that, however slow their
    /// readers. Zero records nothing (nothing is stored). A response nobody
    /// may share (`private`, `no-store`, `Vary: *`, outside `Idempotency-Key`
    /// mode) is not recorded and takes none of it.
    pub fn max_recording_bytes(mut self, bytes: u64) -> Self {
        self.config.max_recording_bytes = bytes;
        self
    }

    /// Answers 409 Conflict, instead of going through, when the wait for an
    /// identical in-flight request runs past [`wait_timeout`](Self::wait_timeout).
    pub fn strict(mut self, strict: bool) -> Self {
        self.config.strict = strict;
        self
    }

    /// Reads the per-request control headers, and removes them before the
    /// request goes on: `x-idempotency-bypass: true` (pass through untouched),
    /// `x-idempotency-refresh: true` (skip the look-up, store the fresh
    /// answer), `x-idempotency-ttl: <seconds>` and
    /// `x-idempotency-namespace: <name>`, `x-idempotency-bucket: <n>` (keep
    /// up to n answers for this request, like
    /// `SamplingPolicy::Bucket`), and `x-idempotency-explain: true`
    /// (the response gets a header of that name listing what went into the
    /// key: method, authority, path, the query's names, the names of the
    /// vary headers sent, how the body was read, the namespace and the key's
    /// hex; never a header's or a parameter's value). A TTL is digits only.
    /// An invalid value is answered 400.
    /// Default: off (the headers pass through like any other). Turn it on
    /// where the callers are trusted to steer the cache, as in a gateway.
    pub fn control_headers(mut self, enabled: bool) -> Self {
        self.config.control_headers = enabled;
        self
    }

    /// Counts calls, tokens and money saved per tenant, for at most
    /// `capacity` tenants (1 to 100,000; a value outside is clamped), in
    /// [`Stats::tenants`](crate::stats::Stats::tenants).
    ///
    /// A request's tenant is its first credential header (`authorization`,
    /// `x-api-key`, `api-key`, `x-goog-api-key`, `cookie`), named by a short
    /// keyed hash of it, never the credential: 16 hex digits that cannot be
    /// reversed and that another deployment (another secret) does not share;
    /// see [`tenant_secret`](Self::tenant_secret). Requests without one are
    /// not counted per tenant. When more tenants come than the table holds,
    /// the one with the fewest requests makes room (space-saving): a tenant
    /// with more than `1 / capacity` of the requests is never lost, and each
    /// count says how far off it may be (`overcount`). Default: off.
    ///
    /// ```
    /// use tower_idempotency::IdempotencyLayer;
    ///
    /// let layer = IdempotencyLayer::builder().count_tenants(100).build();
    /// assert!(layer.stats().tenants.is_empty());
    /// ```
    pub fn count_tenants(mut self, capacity: usize) -> Self {
        let secret = self.config.tenants.and_then(|(_, secret)| secret);
        self.config.tenants = Some((capacity, secret));
        self
    }

    /// The secret tenant ids are keyed with: instances that should give a
    /// credential the same id share it. Default: random per process. Turns
    /// on [`count_tenants`](Self::count_tenants) (100 tenants) if it is off.
    pub fn tenant_secret(mut self, secret: impl AsRef<[u8]>) -> Self {
        use sha2::{Digest, Sha256};
        let secret: [u8; 32] = Sha256::digest(secret.as_ref()).into();
        let capacity = self.config.tenants.map_or(100, |(capacity, _)| capacity);
        self.config.tenants = Some((capacity, Some(secret)));
        self
    }

    /// Keys requests by their `Idempotency-Key` header (the IETF draft, and
    /// Stripe's behaviour): the key is the header's value, scoped by method,
    /// path and the vary headers; the payload's fingerprint is stored with
    /// the response, and the same key with another payload is answered 422.
    /// With [`KeyHeader::Required`](crate::KeyHeader::Required), a request
    /// without the header is answered 400. Keys longer than 255 characters
    /// or with characters outside visible ASCII are answered 400.
    pub fn idempotency_key_header(mut self, mode: KeyHeader) -> Self {
        self.config.key_header = Some(mode);
        self
    }

    /// Prices of the calls the layer saves, to report money saved. Nothing
    /// is priced by default.
    #[cfg(feature = "ai")]
    pub fn prices(mut self, prices: crate::ai::PriceTable) -> Self {
        self.config.ai.prices = Some(prices);
        self
    }

    /// What to do with AI requests that ask for nondeterministic sampling.
    /// Default: nothing special (they are cached like any other).
    #[cfg(feature = "ai")]
    pub fn sampling_policy(mut self, policy: SamplingPolicy) -> Self {
        self.config.ai.sampling = Some(policy);
        self
    }

    /// Builds the layer.
    pub fn build(self) -> IdempotencyLayer {
        IdempotencyLayer::with_config(self.clamped())
    }

    /// The configuration with every duration within its bounds.
    fn clamped(mut self) -> Config {
        let config = &mut self.config;
        config.max_ttl = config.max_ttl.min(Self::MAX_TTL);
        config.ttl = config.ttl.min(config.max_ttl);
        config.wait_timeout = config.wait_timeout.min(Self::MAX_WAIT_TIMEOUT);
        self.config
    }
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("ttl", &self.config.ttl)
            .field("namespace", &self.config.key.namespace)
            .field("methods", &self.config.methods)
            .finish_non_exhaustive()
    }
}

/// How the `Idempotency-Key` request header is used; see
/// [`Builder::idempotency_key_header`].
///
/// # Examples
///
/// A retried payment carries the key of its first attempt, and is answered
/// from it: the payment runs once.
///
/// ```
/// use std::sync::{atomic::{AtomicUsize, Ordering}, Arc};
/// use bytes::Bytes;
/// use http::{Request, Response, StatusCode};
/// use http_body_util::Full;
/// use tower::{Service, ServiceBuilder, ServiceExt};
/// use tower_idempotency::{IdempotencyLayer, KeyHeader, RequestBody};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let payments = Arc::new(AtomicUsize::new(0));
/// let counter = Arc::clone(&payments);
/// let layer = IdempotencyLayer::builder()
///     .idempotency_key_header(KeyHeader::Required)
///     .build();
/// let mut service = ServiceBuilder::new()
///     .layer(layer)
///     .service_fn(move |_: Request<RequestBody<Full<Bytes>>>| {
///         counter.fetch_add(1, Ordering::SeqCst);
///         async { Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from("paid")))) }
///     });
///
/// for _ in 0..2 {
///     let request = Request::post("/v1/payments")
///         .header("idempotency-key", "order-8812")
///         .body(Full::new(Bytes::from(r#"{"amount":100}"#)))?;
///     let response = service.ready().await?.call(request).await?;
///     assert_eq!(response.status(), StatusCode::OK);
/// }
/// assert_eq!(payments.load(Ordering::SeqCst), 1);
///
/// // Required: a request without the header is answered 400.
/// let request = Request::post("/v1/payments").body(Full::new(Bytes::from("{}")))?;
/// let response = service.ready().await?.call(request).await?;
/// assert_eq!(response.status(), StatusCode::BAD_REQUEST);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyHeader {
    /// A request with the header is keyed by it; one without is keyed by
    /// its content.
    Optional,
    /// A request without the header is answered 400.
    Required,
}

/// What to do with AI requests that ask for nondeterministic sampling
/// (`temperature > 0`, or no temperature, and no `seed`); see
/// [`Builder::sampling_policy`].
///
/// # Examples
///
/// ```
/// use std::sync::{atomic::{AtomicUsize, Ordering}, Arc};
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body_util::Full;
/// use tower::{Service, ServiceBuilder, ServiceExt};
/// use tower_idempotency::{IdempotencyLayer, RequestBody, SamplingPolicy};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let calls = Arc::new(AtomicUsize::new(0));
/// let counter = Arc::clone(&calls);
/// let layer = IdempotencyLayer::builder()
///     .sampling_policy(SamplingPolicy::Skip)
///     .build();
/// let mut service = ServiceBuilder::new()
///     .layer(layer.clone())
///     .service_fn(move |_: Request<RequestBody<Full<Bytes>>>| {
///         counter.fetch_add(1, Ordering::SeqCst);
///         async { Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from("a poem")))) }
///     });
///
/// // Asked twice for a creative answer: each ask gets its own.
/// for _ in 0..2 {
///     let request = Request::post("/v1/chat/completions")
///         .header("content-type", "application/json")
///         .body(Full::new(Bytes::from(r#"{"model":"m","temperature":0.9,"messages":[]}"#)))?;
///     service.ready().await?.call(request).await?;
/// }
/// assert_eq!(calls.load(Ordering::SeqCst), 2);
/// assert_eq!(layer.stats().bypassed.sampling, 2);
/// # Ok(())
/// # }
/// ```
#[cfg(feature = "ai")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SamplingPolicy {
    /// Never cache them: a user who asks again wants another answer.
    Skip,
    /// Cache them only this long, enough to absorb retries and double-clicks
    /// but not an intentional re-ask a minute later.
    RetryWindow(Duration),
    /// Keep up to this many answers per request: the first `n` such requests
    /// each call upstream and are all stored; later repeats get one of the
    /// `n` at random. Through Redis, the count is shared by every instance;
    /// concurrent duplicates still share a call while the buckets fill.
    /// `n` is clamped to 1..=[`MAX_BUCKETS`](Self::MAX_BUCKETS). Per request,
    /// `x-idempotency-bucket: <n>` asks the same (with
    /// [`Builder::control_headers`]).
    Bucket(u32),
}

#[cfg(feature = "ai")]
impl SamplingPolicy {
    /// The most answers [`Bucket`](Self::Bucket) keeps per request.
    pub const MAX_BUCKETS: u32 = crate::engine::MAX_BUCKETS;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_clamped_when_the_layer_is_built() {
        let config = IdempotencyLayer::builder()
            .ttl(Duration::MAX)
            .wait_timeout(Duration::MAX)
            .clamped();
        assert_eq!(config.ttl, Duration::from_secs(30 * 24 * 60 * 60));
        assert_eq!(config.wait_timeout, Builder::MAX_WAIT_TIMEOUT);
        let config = IdempotencyLayer::builder()
            .max_ttl(Duration::MAX)
            .ttl(Duration::MAX)
            .clamped();
        assert_eq!(
            (config.max_ttl, config.ttl),
            (Builder::MAX_TTL, Builder::MAX_TTL)
        );
        let config = IdempotencyLayer::builder()
            .max_ttl(Duration::ZERO)
            .wait_timeout(Duration::ZERO)
            .clamped();
        assert_eq!(
            (config.ttl, config.wait_timeout),
            (Duration::ZERO, Duration::ZERO)
        );
        // Building never panics, whatever the durations.
        let _ = IdempotencyLayer::builder()
            .ttl(Duration::MAX)
            .max_ttl(Duration::MAX)
            .wait_timeout(Duration::MAX)
            .build();
    }
}
