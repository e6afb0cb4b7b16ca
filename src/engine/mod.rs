//! The engine: from a request to its answer, free of Tower plumbing.
//!
//! ```text
//! request ─► policy ─► body ─► key ─► L1 ─► flight ─► L2 ─► upstream
//!              │        │            hit│     │follower hit│      │
//!            bypass  too large     replay  shares the   replay   tee (tee.rs): stream to
//!                                          leader's             the caller, record for
//!                                          response             L1 and L2, wake waiters
//! ```
//!
//! The Tower service and the reqwest middleware are thin adapters: each hands
//! the engine a request and an [`Upstream`], and gets a response back.

mod tee;

use std::{
    future::Future,
    pin::pin,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{
    header, request, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode,
};
use http_body::Body;
use tracing::Instrument;

use crate::{
    body::{buffer, Buffered, RequestBody, ResponseBody},
    cache_status::CacheStatus,
    error::{BoxError, Error, ErrorKind},
    flight::{Flights, Head, Joined, Leader, Reader, Role},
    idempotency_key::{self, KeyError},
    key::{Key, KeySpec},
    policy::{self, Directive, StorePredicate, Successful},
    record::{now_millis, Meta, Record},
    stats::Counters,
    store::{Backend, FleetCounter, Lease, Lookup, MemoryStore, Renewal, L2},
    telemetry::{self, Outcome},
};

/// How the `Idempotency-Key` request header is used.
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
/// (`temperature > 0`, or no temperature, and no `seed`).
#[cfg(feature = "ai")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SamplingPolicy {
    /// Never cache them: a user who asks again wants another answer.
    Skip,
    /// Cache them only this long, enough to absorb retries and double-clicks
    /// but not an intentional re-ask a minute later.
    RetryWindow(Duration),
}

/// Everything fixed when the layer is built.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) key: KeySpec,
    pub(crate) methods: Vec<Method>,
    pub(crate) store_if: Arc<dyn StorePredicate>,
    pub(crate) ttl: Duration,
    /// The longest TTL: [`Config::ttl`] is clamped to it when the layer is
    /// built, and a longer `x-idempotency-ttl` is refused.
    pub(crate) max_ttl: Duration,
    pub(crate) l1_capacity: u64,
    pub(crate) max_request_body: usize,
    pub(crate) max_response_body: usize,
    pub(crate) cache_status: bool,
    pub(crate) wait_timeout: Duration,
    pub(crate) upstream_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) max_recording_bytes: u64,
    pub(crate) strict: bool,
    pub(crate) control_headers: bool,
    pub(crate) key_header: Option<KeyHeader>,
    pub(crate) max_key_len: usize,
    #[cfg(feature = "ai")]
    pub(crate) prices: Option<crate::ai::PriceTable>,
    #[cfg(feature = "ai")]
    pub(crate) sampling: Option<SamplingPolicy>,
    /// The L2, if any: Redis or a SQLite file.
    pub(crate) l2: Backend,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            key: KeySpec::default(),
            methods: policy::default_methods(),
            store_if: Arc::new(Successful),
            ttl: Duration::from_secs(60 * 60),
            max_ttl: Duration::from_secs(30 * 24 * 60 * 60),
            l1_capacity: 64 * 1024 * 1024,
            max_request_body: 16 * 1024 * 1024,
            max_response_body: 16 * 1024 * 1024,
            cache_status: true,
            wait_timeout: Duration::from_secs(60),
            upstream_timeout: Duration::from_secs(10 * 60),
            idle_timeout: Duration::from_secs(5 * 60),
            max_recording_bytes: 256 * 1024 * 1024,
            strict: false,
            control_headers: false,
            key_header: None,
            max_key_len: idempotency_key::DEFAULT_MAX_LEN,
            #[cfg(feature = "ai")]
            prices: None,
            #[cfg(feature = "ai")]
            sampling: None,
            l2: Backend::None,
        }
    }
}

/// The per-request control headers, consumed by the layer when
/// [`control_headers`](crate::Builder::control_headers) is on.
pub(crate) mod control {
    use http::HeaderName;

    /// `true`: pass the request through untouched.
    pub(crate) const BYPASS: HeaderName = HeaderName::from_static("x-idempotency-bypass");
    /// `true`: skip the look-up, call upstream, store the fresh answer.
    pub(crate) const REFRESH: HeaderName = HeaderName::from_static("x-idempotency-refresh");
    /// Whole seconds to keep this request's answer.
    pub(crate) const TTL: HeaderName = HeaderName::from_static("x-idempotency-ttl");
    /// The namespace for this request.
    pub(crate) const NAMESPACE: HeaderName = HeaderName::from_static("x-idempotency-namespace");
}

/// One upstream call: the ready inner service of a Tower stack, or the rest
/// of a client middleware chain.
pub(crate) trait Upstream<ReqBody>: Send + Sized {
    type Body: Body + Send + 'static;
    type Error: Send + 'static;

    /// Sends a request the engine does not handle.
    fn forward(
        self,
        request: Request<ReqBody>,
    ) -> impl Future<Output = Result<Response<Self::Body>, Self::Error>> + Send;

    /// Makes a leader's call, through [`Engine::lead_detached`] where the call
    /// can outlive its caller, else [`Engine::lead_attached`].
    fn lead(
        self,
        engine: Arc<Engine>,
        lead: Lead,
        request: Request<ReqBody>,
    ) -> impl Future<Output = Answer<Self::Body, Self::Error>> + Send;
}

pub(crate) type Answer<B, E> = Result<Response<ResponseBody<B>>, E>;

/// Why a request skips the engine, decided from its head alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Skip {
    Method,
    /// `Cache-Control: no-store`, or the bypass control header.
    NoStore,
}

/// What the request head asks of the layer.
#[derive(Debug)]
pub(crate) struct Plan {
    refresh: bool,
    namespace: Option<String>,
    ttl: Option<Duration>,
}

/// The head's verdict.
pub(crate) enum Classified {
    Engine(Plan),
    Skip(Skip),
    Reject(Error),
}

/// One request's identity and storage terms.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    key: Key,
    /// The namespace's tag in the shared store.
    ns: String,
    ttl: Duration,
    /// In `Idempotency-Key` mode: the payload's content key.
    fingerprint: Option<Key>,
    refresh: bool,
}

/// A leader about to call upstream, with everything its recording needs.
pub(crate) struct Lead {
    leader: Leader,
    job: Job,
    /// The leader's request headers, for the response's `Vary`.
    request_headers: HeaderMap,
    claim: Claim,
    model: Option<String>,
    started: Instant,
}

/// The leader's claim on a key in the shared store, kept alive while the
/// call runs.
struct Claim {
    lease: Option<Lease>,
    _renewal: Option<Renewal>,
}

pub(crate) struct Engine {
    config: Config,
    l1: MemoryStore,
    l2: L2,
    /// The default namespace's tag in the shared store.
    ns: String,
    flights: Arc<Flights>,
    pub(crate) counters: Counters,
}

impl Engine {
    pub(crate) fn new(config: Config) -> Self {
        let l1 = MemoryStore::new(config.l1_capacity);
        let l2 = L2::new(config.l2.clone(), &l1);
        Self {
            l1,
            ns: l2.tag(&config.key.namespace),
            l2,
            flights: Arc::new(Flights::new(config.max_recording_bytes)),
            counters: Counters::default(),
            config,
        }
    }

    pub(crate) fn stats(&self) -> crate::Stats {
        self.counters.snapshot(self.l2.health())
    }

    /// The key the engine stores this request under (in `Idempotency-Key`
    /// mode, the one named by the header; with the control headers on, in
    /// the namespace the request chose).
    pub(crate) fn key(&self, head: &request::Parts, body: &[u8]) -> Option<Key> {
        let mut namespace = self.config.key.namespace.as_str();
        if self.config.control_headers {
            if let Some(chosen) = head.headers.get(&control::NAMESPACE) {
                // An unreadable one is answered 400: nothing is stored.
                namespace = chosen.to_str().ok()?.trim();
            }
        }
        let identity = self.identify(namespace, head, body);
        identity.ok().flatten().map(|(key, _)| key)
    }

    pub(crate) fn l1(&self) -> &MemoryStore {
        &self.l1
    }

    #[cfg(feature = "redis")]
    pub(crate) fn namespace(&self) -> &str {
        &self.config.key.namespace
    }

    #[cfg(feature = "redis")]
    pub(crate) fn l2(&self) -> &L2 {
        &self.l2
    }

    pub(crate) fn flights_in_progress(&self) -> usize {
        self.flights.len()
    }

    pub(crate) fn recording_bytes(&self) -> u64 {
        self.flights.budget().used()
    }

    pub(crate) async fn purge(&self, namespace: Option<&str>, key: &Key) {
        self.l1.remove(key).await;
        let ns = namespace.map_or_else(|| self.ns.clone(), |ns| self.l2.tag(ns));
        self.l2.purge(&ns, key).await;
    }

    pub(crate) async fn purge_namespace(&self, namespace: &str) {
        self.l1.clear();
        self.l2.purge_namespace(&self.l2.tag(namespace)).await;
    }

    /// Counts a request here and in the fleet totals.
    fn tally(&self, local: &std::sync::atomic::AtomicU64, fleet: FleetCounter) {
        Counters::inc(local);
        self.l2.count(fleet, 1);
    }

    pub(crate) fn count_upstream_call(&self) {
        self.tally(&self.counters.upstream_calls, FleetCounter::UpstreamCalls);
    }

    /// The headers whose values go into a key.
    #[cfg(feature = "reqwest")]
    pub(crate) fn vary_headers(&self) -> &[HeaderName] {
        &self.config.key.vary
    }

    /// Counts a request a client adapter sends on uncached because it cannot
    /// know the headers it will be sent with.
    #[cfg(feature = "reqwest")]
    pub(crate) fn count_unknown_headers(&self) {
        Counters::inc(&self.counters.requests);
        Counters::inc(&self.counters.bypass_no_key);
        telemetry::outcome(Outcome::Bypass);
        self.count_upstream_call();
    }

    /// Decides from the request head alone whether the engine is needed, and
    /// consumes the control headers.
    pub(crate) fn classify(&self, method: &Method, headers: &mut HeaderMap) -> Classified {
        Counters::inc(&self.counters.requests);
        let mut plan = Plan {
            refresh: false,
            namespace: None,
            ttl: None,
        };
        let mut bypass = false;
        if self.config.control_headers {
            match take_controls(headers, &mut plan, self.config.max_ttl) {
                Ok(asked) => bypass = asked,
                Err(error) => {
                    Counters::inc(&self.counters.rejected);
                    return Classified::Reject(error);
                }
            }
        }
        if !self.config.methods.contains(method) {
            Counters::inc(&self.counters.bypass_method);
            telemetry::outcome(Outcome::Bypass);
            return Classified::Skip(Skip::Method);
        }
        // In `Idempotency-Key` mode the key contract wins over the request's
        // cache directives: a client cannot switch off the 400 for a missing
        // key, the 422 for a reused one, or coalescing, with `Cache-Control`.
        let keyed = match self.config.key_header {
            Some(KeyHeader::Required) => true,
            Some(KeyHeader::Optional) => headers.contains_key(idempotency_key::IDEMPOTENCY_KEY),
            None => false,
        };
        match policy::request_directive(headers) {
            _ if keyed => {}
            Directive::NoStore => bypass = true,
            Directive::Refresh => plan.refresh = true,
            Directive::Normal => {}
        }
        if bypass {
            Counters::inc(&self.counters.bypass_no_store);
            telemetry::outcome(Outcome::Bypass);
            return Classified::Skip(Skip::NoStore);
        }
        Classified::Engine(plan)
    }

    /// The `cache-status` member for a skipped request, if the header is on.
    pub(crate) fn skip_status(&self, skip: Skip) -> Option<CacheStatus> {
        let status = match skip {
            Skip::Method => CacheStatus::Method,
            Skip::NoStore => CacheStatus::Bypass,
        };
        self.config.cache_status.then_some(status)
    }

    /// Answers an eligible request. The response carries its [`Key`] in its
    /// extensions when it has one.
    pub(crate) async fn handle<B, U>(
        self: Arc<Self>,
        request: Request<B>,
        plan: Plan,
        upstream: U,
    ) -> Answer<U::Body, U::Error>
    where
        B: Body + Unpin + Send + 'static,
        B::Error: Into<BoxError>,
        U: Upstream<RequestBody<B>>,
        <U::Body as Body>::Error: Into<BoxError>,
    {
        let (parts, body) = request.into_parts();
        let body = match buffer(body, self.config.max_request_body).await {
            Buffered::Complete(bytes) => bytes,
            Buffered::Passthrough(body) => {
                Counters::inc(&self.counters.bypass_too_large);
                return self
                    .forward(upstream, Request::from_parts(parts, body))
                    .await;
            }
            Buffered::Failed(error) => {
                Counters::inc(&self.counters.bad_requests);
                return Ok(self.reject(Error::new(ErrorKind::RequestBody, error)));
            }
        };

        #[cfg_attr(not(feature = "ai"), allow(unused_mut))]
        let mut ttl = plan.ttl.unwrap_or(self.config.ttl);
        #[cfg(feature = "ai")]
        if let Some(policy) = self.config.sampling {
            if crate::ai::sampling(&body) == crate::ai::Sampling::Nondeterministic {
                match policy {
                    SamplingPolicy::Skip => {
                        Counters::inc(&self.counters.bypass_sampling);
                        let request = Request::from_parts(parts, RequestBody::buffered(body));
                        return self.forward(upstream, request).await;
                    }
                    SamplingPolicy::RetryWindow(window) => ttl = ttl.min(window),
                }
            }
        }

        let namespace = plan
            .namespace
            .as_deref()
            .unwrap_or(&self.config.key.namespace);
        let (key, fingerprint) = match self.identify(namespace, &parts, &body) {
            Ok(Some(identity)) => identity,
            Ok(None) => {
                Counters::inc(&self.counters.bypass_no_key);
                let request = Request::from_parts(parts, RequestBody::buffered(body));
                return self.forward(upstream, request).await;
            }
            Err(error) => {
                Counters::inc(&self.counters.rejected);
                return Ok(self.reject(error));
            }
        };
        let ns = match &plan.namespace {
            Some(namespace) => self.l2.tag(namespace),
            None => self.ns.clone(),
        };
        let job = Job {
            key,
            ns,
            ttl,
            fingerprint,
            refresh: plan.refresh,
        };
        let span = tracing::debug_span!("idempotency", key = ?key, outcome = tracing::field::Empty);
        let mut answer = Arc::clone(&self)
            .answer(job, parts, body, upstream)
            .instrument(span)
            .await;
        if let Ok(response) = &mut answer {
            response.extensions_mut().insert(key);
        }
        answer
    }

    /// The request's key and, in `Idempotency-Key` mode, its payload's
    /// fingerprint. `None`: a custom key function declined it.
    fn identify(
        &self,
        namespace: &str,
        parts: &request::Parts,
        body: &[u8],
    ) -> Result<Option<(Key, Option<Key>)>, Error> {
        let Some(content) = self.config.key.key(namespace, parts, body) else {
            return Ok(None);
        };
        let Some(mode) = self.config.key_header else {
            return Ok(Some((content, None)));
        };
        match idempotency_key::parse_idempotency_key(&parts.headers, self.config.max_key_len) {
            Ok(value) => Ok(Some((
                self.config.key.header_key(namespace, parts, &value),
                Some(content),
            ))),
            Err(KeyError::Missing) if mode == KeyHeader::Optional => Ok(Some((content, None))),
            Err(KeyError::Missing) => Err(Error::new(ErrorKind::MissingKey, KeyError::Missing)),
            Err(error) => Err(Error::new(ErrorKind::InvalidKey, error)),
        }
    }

    async fn answer<B, U>(
        self: Arc<Self>,
        job: Job,
        parts: request::Parts,
        body: Bytes,
        upstream: U,
    ) -> Answer<U::Body, U::Error>
    where
        U: Upstream<RequestBody<B>>,
        <U::Body as Body>::Error: Into<BoxError>,
    {
        if job.refresh {
            Counters::inc(&self.counters.refreshes);
            telemetry::outcome(Outcome::Refresh);
            let leader = self.flights.solo(job.key, job.fingerprint);
            return self
                .call_upstream(leader, job, None, parts, body, upstream)
                .await;
        }
        if let Some(record) = self.l1.get(&job.key).await {
            if self.fits(&job, &record, &parts.headers) {
                return Ok(self.hit(&job, &record, Outcome::HitL1));
            }
        }
        // A follower waits for its leader at most this long, like a waiter
        // on another instance.
        let deadline = tokio::time::Instant::now().checked_add(self.config.wait_timeout);
        loop {
            match self.flights.join_or_lead(job.key, job.fingerprint) {
                Role::Follow(flight) => {
                    if job.fingerprint.is_some() {
                        if flight.fingerprint() != job.fingerprint {
                            return Ok(self.reject(key_reused()));
                        }
                        if self.config.strict {
                            return Ok(self.reject(in_flight()));
                        }
                    }
                    let joined = flight.join(&parts.headers);
                    let joined = match deadline {
                        Some(deadline) => tokio::time::timeout_at(deadline, joined).await,
                        None => Ok(joined.await),
                    };
                    let Ok(joined) = joined else {
                        Counters::inc(&self.counters.wait_timeouts);
                        if self.config.strict {
                            return Ok(self.reject(in_flight()));
                        }
                        return self.alone(job, parts, body, upstream).await;
                    };
                    match joined {
                        Joined::Replay(record) if self.fits(&job, &record, &parts.headers) => {
                            return Ok(self.hit(&job, &record, Outcome::Coalesced))
                        }
                        Joined::Replay(_) | Joined::Alone => {
                            return self.alone(job, parts, body, upstream).await
                        }
                        Joined::Live(head, reader, settled) => {
                            self.tally(&self.counters.coalesced, FleetCounter::Coalesced);
                            if let Some((meta, bytes)) = settled {
                                self.count_savings(&meta, bytes, 1);
                            }
                            telemetry::outcome(Outcome::Coalesced);
                            tracing::Span::current().record("outcome", "collapsed");
                            return Ok(self.live(
                                &head,
                                &head.shared_headers,
                                reader,
                                CacheStatus::Collapsed,
                            ));
                        }
                        Joined::Retry => continue,
                    }
                }
                Role::Lead(leader) => {
                    // The look-up above may have raced a flight that stored
                    // its answer and left the map: this one is authoritative.
                    if let Some(record) = self.l1.get(&job.key).await {
                        if self.fits(&job, &record, &parts.headers) {
                            leader.replay(Arc::clone(&record));
                            return Ok(self.hit(&job, &record, Outcome::HitL1));
                        }
                    }
                    return self.lead_shared(leader, job, parts, body, upstream).await;
                }
            }
        }
    }

    /// Calls upstream for a request no flight can serve, without a flight
    /// others could join.
    async fn alone<B, U>(
        self: Arc<Self>,
        job: Job,
        parts: request::Parts,
        body: Bytes,
        upstream: U,
    ) -> Answer<U::Body, U::Error>
    where
        U: Upstream<RequestBody<B>>,
        <U::Body as Body>::Error: Into<BoxError>,
    {
        let leader = self.flights.solo(job.key, job.fingerprint);
        self.call_upstream(leader, job, None, parts, body, upstream)
            .await
    }

    /// The request headers the key covers: a stored response that varies on
    /// these needs nothing more.
    fn keyed(&self) -> &[HeaderName] {
        match self.config.key.custom {
            // A custom key's material is unknown: nothing counts as covered.
            Some(_) => &[],
            None => &self.config.key.vary,
        }
    }

    /// Whether a stored response may answer a request with these headers:
    /// its `Vary` is honoured, except in `Idempotency-Key` mode, where the
    /// key contract wins.
    fn fits(&self, job: &Job, record: &Record, request: &HeaderMap) -> bool {
        job.fingerprint.is_some() || record.fits(request, self.keyed())
    }

    /// The local leader asks the shared store: a hit, the lease (then call
    /// upstream), or wait for the instance that holds it.
    async fn lead_shared<B, U>(
        self: Arc<Self>,
        leader: Leader,
        job: Job,
        parts: request::Parts,
        body: Bytes,
        upstream: U,
    ) -> Answer<U::Body, U::Error>
    where
        U: Upstream<RequestBody<B>>,
        <U::Body as Body>::Error: Into<BoxError>,
    {
        // Registered before the first look-up: a completion announced between
        // a look-up and the wait that follows it is not missed.
        let Some(watch) = self.l2.watch(job.key) else {
            // A store without cross-process single flight: one look-up. An
            // entry stored for other values of the headers it varies on is a
            // miss, whose fresh answer replaces it.
            if let Lookup::Hit(record) = self.l2.lookup(&job.ns, &job.key).await {
                if !self.fits(&job, &record, &parts.headers) {
                    return self
                        .call_upstream(leader, job, None, parts, body, upstream)
                        .await;
                }
                self.l1.insert(job.key, Arc::clone(&record)).await;
                leader.replay(Arc::clone(&record));
                return Ok(self.hit(&job, &record, Outcome::HitL2));
            }
            return self
                .call_upstream(leader, job, None, parts, body, upstream)
                .await;
        };
        // No deadline past what `Instant` can hold.
        let deadline = Instant::now().checked_add(self.config.wait_timeout);
        loop {
            let notified = watch.notify().notified();
            let mut notified = pin!(notified);
            notified.as_mut().enable();
            // The call we waited for ended without storing its answer: go
            // through now, alongside every other waiter, rather than claim
            // the key one after another.
            if watch.passed() {
                return self
                    .call_upstream(leader, job, None, parts, body, upstream)
                    .await;
            }
            match self.l2.lookup(&job.ns, &job.key).await {
                Lookup::Hit(record) if self.fits(&job, &record, &parts.headers) => {
                    self.l1.insert(job.key, Arc::clone(&record)).await;
                    leader.replay(Arc::clone(&record));
                    return Ok(self.hit(&job, &record, Outcome::HitL2));
                }
                // Stored for other values of the headers it varies on: a
                // miss, whose fresh answer replaces the entry.
                Lookup::Hit(_) => {
                    return self
                        .call_upstream(leader, job, None, parts, body, upstream)
                        .await;
                }
                Lookup::Claimed(lease) => {
                    return self
                        .call_upstream(leader, job, Some(lease), parts, body, upstream)
                        .await;
                }
                Lookup::Garbage | Lookup::Unavailable => {
                    return self
                        .call_upstream(leader, job, None, parts, body, upstream)
                        .await;
                }
                Lookup::Busy(lease_left) => {
                    if job.fingerprint.is_some() && self.config.strict {
                        return Ok(self.reject(in_flight()));
                    }
                    let now = Instant::now();
                    if deadline.is_some_and(|deadline| now >= deadline) {
                        Counters::inc(&self.counters.wait_timeouts);
                        if self.config.strict {
                            return Ok(self.reject(in_flight()));
                        }
                        return self
                            .call_upstream(leader, job, None, parts, body, upstream)
                            .await;
                    }
                    // Woken by the notification; else look again when the
                    // lease could have run out, and at least every poll
                    // interval in case a message was lost.
                    let nap = (lease_left + Duration::from_millis(5))
                        .min(self.l2.poll_interval())
                        .min(deadline.map_or(Duration::MAX, |deadline| deadline - now));
                    let _ = tokio::time::timeout(nap, notified).await;
                }
            }
        }
    }

    /// Calls upstream as a flight's leader.
    async fn call_upstream<B, U>(
        self: Arc<Self>,
        leader: Leader,
        job: Job,
        lease: Option<Lease>,
        parts: request::Parts,
        body: Bytes,
        upstream: U,
    ) -> Answer<U::Body, U::Error>
    where
        U: Upstream<RequestBody<B>>,
        <U::Body as Body>::Error: Into<BoxError>,
    {
        if !job.refresh {
            self.tally(&self.counters.misses, FleetCounter::Misses);
            telemetry::outcome(Outcome::Miss);
        }
        tracing::Span::current().record("outcome", if job.refresh { "refresh" } else { "miss" });
        self.count_upstream_call();
        let renewal = lease
            .as_ref()
            .and_then(|lease| self.l2.keep_alive(&job.ns, &job.key, lease));
        #[cfg(feature = "ai")]
        let model = crate::ai::request_model(&body);
        #[cfg(not(feature = "ai"))]
        let model = None;
        let lead = Lead {
            leader,
            request_headers: parts.headers.clone(),
            job,
            claim: Claim {
                lease,
                _renewal: renewal,
            },
            model,
            started: Instant::now(),
        };
        let request = Request::from_parts(parts, RequestBody::buffered(body));
        upstream.lead(Arc::clone(&self), lead, request).await
    }

    /// Sends a request the layer does not handle straight to the inner service.
    async fn forward<B, U>(
        &self,
        upstream: U,
        request: Request<RequestBody<B>>,
    ) -> Answer<U::Body, U::Error>
    where
        U: Upstream<RequestBody<B>>,
    {
        self.count_upstream_call();
        telemetry::outcome(Outcome::Bypass);
        let mut response = upstream.forward(request).await?.map(ResponseBody::inner);
        self.mark(response.headers_mut(), CacheStatus::Bypass);
        Ok(response)
    }

    /// Answers from a stored record: a hit, or a follower whose leader found
    /// one. In `Idempotency-Key` mode, a record stored for another payload
    /// is refused.
    fn hit<B>(&self, job: &Job, record: &Record, outcome: Outcome) -> Response<ResponseBody<B>> {
        if let (Some(mine), Some(theirs)) = (job.fingerprint, record.info.fingerprint) {
            if mine != theirs {
                return self.reject(key_reused());
            }
        }
        match outcome {
            Outcome::HitL1 => {
                self.tally(&self.counters.hits_l1, FleetCounter::HitsL1);
                self.l2.count_l1_hit(&job.ns, &job.key);
            }
            Outcome::HitL2 => self.tally(&self.counters.hits_l2, FleetCounter::HitsL2),
            _ => self.tally(&self.counters.coalesced, FleetCounter::Coalesced),
        }
        telemetry::outcome(outcome);
        tracing::Span::current().record("outcome", outcome.label());
        self.count_savings(&record.info, record.body.len() as u64, 1);
        self.replay(record)
    }

    /// Counts what `calls` avoided calls to an upstream that answered `bytes`
    /// of body described by `info` saved: bytes, tokens, money.
    fn count_savings(&self, info: &Meta, bytes: u64, calls: u64) {
        let bytes = bytes * calls;
        #[cfg(feature = "ai")]
        let (tokens, micro_dollars) = {
            let tokens = info.usage.map_or(0, |u| u.total()) * calls;
            let cost = self.config.prices.as_ref().map_or(0, |prices| {
                prices
                    .cost(info.model.as_deref(), info.usage.as_ref())
                    .micro_dollars()
            });
            (tokens, cost * calls)
        };
        #[cfg(not(feature = "ai"))]
        let (tokens, micro_dollars) = {
            let _ = info;
            (0, 0)
        };
        Counters::add(&self.counters.bytes_saved, bytes);
        Counters::add(&self.counters.tokens_saved, tokens);
        Counters::add(&self.counters.micro_dollars_saved, micro_dollars);
        telemetry::saved(bytes, tokens, micro_dollars);
    }

    /// A stored response, with `age` and a `hit` cache status.
    fn replay<B>(&self, record: &Record) -> Response<ResponseBody<B>> {
        let now = now_millis();
        let mut response = Response::new(ResponseBody::replay(
            record.body.clone(),
            record.trailers.clone(),
        ));
        *response.status_mut() = record.status;
        *response.version_mut() = record.version;
        let headers = response.headers_mut();
        *headers = record.headers.clone();
        headers.insert(header::AGE, HeaderValue::from(record.age_at(now)));
        self.mark(
            headers,
            CacheStatus::Hit {
                ttl: record.ttl_at(now).as_secs(),
            },
        );
        response
    }

    /// A live view of a flight's response.
    fn live<B>(
        &self,
        head: &Head,
        headers: &HeaderMap,
        reader: Reader,
        status: CacheStatus,
    ) -> Response<ResponseBody<B>> {
        let mut response = Response::new(ResponseBody::live(reader));
        *response.status_mut() = head.status;
        *response.version_mut() = head.version;
        *response.headers_mut() = headers.clone();
        self.mark(response.headers_mut(), status);
        response
    }

    fn mark(&self, headers: &mut HeaderMap, status: CacheStatus) {
        if self.config.cache_status {
            status.append_to(headers);
        }
    }

    /// The layer's own failure as an RFC 9457 problem response, with the
    /// [`Error`] in its extensions.
    pub(crate) fn reject<B>(&self, error: Error) -> Response<ResponseBody<B>> {
        let status = match error.kind() {
            ErrorKind::RequestBody
            | ErrorKind::MissingKey
            | ErrorKind::InvalidKey
            | ErrorKind::InvalidControl => StatusCode::BAD_REQUEST,
            ErrorKind::InFlight => StatusCode::CONFLICT,
            ErrorKind::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::KeyReused => StatusCode::UNPROCESSABLE_ENTITY,
        };
        match error.kind() {
            ErrorKind::KeyReused => Counters::inc(&self.counters.key_reused),
            ErrorKind::InFlight => Counters::inc(&self.counters.in_flight_conflicts),
            _ => {}
        }
        telemetry::outcome(Outcome::Rejected);
        tracing::Span::current().record("outcome", "rejected");
        let title = status.canonical_reason().unwrap_or("Error");
        let body = idempotency_key::problem_json(status.as_u16(), title, &error.detail());
        let mut response = Response::new(ResponseBody::replay(body, None));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(idempotency_key::PROBLEM_JSON_CONTENT_TYPE),
        );
        response.extensions_mut().insert(error);
        response
    }

    fn internal_error<B>(&self) -> Response<ResponseBody<B>> {
        let mut response = Response::new(ResponseBody::empty());
        *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        response
    }
}

fn key_reused() -> Error {
    Error::new(
        ErrorKind::KeyReused,
        "this idempotency-key was already used with another payload",
    )
}

fn in_flight() -> Error {
    Error::new(
        ErrorKind::InFlight,
        "a request with this key is still being processed",
    )
}

/// Removes the control headers (they never reach upstream) and reads them
/// into `plan`. Returns whether the request asked to bypass the layer.
///
/// A TTL is a whole number of seconds from zero (answer, but keep nothing) to
/// `max_ttl`; anything else is refused.
fn take_controls(
    headers: &mut HeaderMap,
    plan: &mut Plan,
    max_ttl: Duration,
) -> Result<bool, Error> {
    let take = |headers: &mut HeaderMap, name: &HeaderName| -> Result<Option<String>, Error> {
        match headers.remove(name) {
            None => Ok(None),
            Some(value) => value
                .to_str()
                .map(|v| Some(v.trim().to_owned()))
                .map_err(|_| invalid_control(name)),
        }
    };
    let flag = |headers: &mut HeaderMap, name: &HeaderName| -> Result<bool, Error> {
        match take(headers, name)?.as_deref() {
            None => Ok(false),
            Some(value) if value.eq_ignore_ascii_case("true") || value == "1" => Ok(true),
            Some(value) if value.eq_ignore_ascii_case("false") || value == "0" => Ok(false),
            Some(_) => Err(invalid_control(name)),
        }
    };
    let bypass = flag(headers, &control::BYPASS)?;
    plan.refresh |= flag(headers, &control::REFRESH)?;
    if let Some(ttl) = take(headers, &control::TTL)? {
        let seconds: u64 = ttl.parse().map_err(|_| invalid_control(&control::TTL))?;
        let ttl = Duration::from_secs(seconds);
        if ttl > max_ttl {
            return Err(Error::new(
                ErrorKind::InvalidControl,
                format!(
                    "{} must be at most {} seconds",
                    control::TTL,
                    max_ttl.as_secs()
                ),
            ));
        }
        plan.ttl = Some(ttl);
    }
    if let Some(namespace) = take(headers, &control::NAMESPACE)? {
        plan.namespace = Some(namespace);
    }
    Ok(bypass)
}

fn invalid_control(name: &HeaderName) -> Error {
    let detail = match *name {
        ref n if n == control::TTL => format!("{n} must be a whole number of seconds"),
        ref n if n == control::NAMESPACE => format!("{n} must be visible ASCII"),
        ref n => format!("{n} must be true or false"),
    };
    Error::new(ErrorKind::InvalidControl, detail)
}
