//! The engine: from a request to its answer, free of Tower plumbing.
//!
//! ```text
//! request ─► policy ─► body buffer ─► key ─► L1 ─► flight ─► inner service
//!              │          │                  hit│     │follower     │
//!            bypass    too large            replay  shares the   tee: stream to the
//!                                                   leader's     caller, record for L1
//! ```
//!
//! The Tower service is a thin adapter: it hands the engine a request and an
//! [`Upstream`] (its ready inner service), and gets a response back.

use std::{
    future::Future,
    panic,
    pin::pin,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::{Buf, Bytes};
use http::{
    header, request, response, HeaderMap, HeaderValue, Method, Request, Response, StatusCode,
};
use http_body::Body;
use http_body_util::BodyExt;
use tokio::sync::oneshot;

use crate::{
    body::{buffer, Buffered, RequestBody, ResponseBody},
    cache_status::CacheStatus,
    error::{BoxError, Error, ErrorKind},
    flight::{Flights, Head, Joined, Leader, Reader, Role},
    key::{Key, KeySpec},
    policy::{self, Directive, StorePredicate, Successful},
    record::{now_millis, Record},
    stats::Counters,
    store::{FleetCounter, Lease, Lookup, MemoryStore, Renewal, L2},
};

/// Everything fixed when the layer is built.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) key: KeySpec,
    pub(crate) methods: Vec<Method>,
    pub(crate) store_if: Arc<dyn StorePredicate>,
    pub(crate) ttl: Duration,
    pub(crate) l1_capacity: u64,
    pub(crate) max_request_body: usize,
    pub(crate) max_response_body: usize,
    pub(crate) cache_status: bool,
    pub(crate) wait_timeout: Duration,
    pub(crate) strict: bool,
    #[cfg(feature = "redis")]
    pub(crate) redis: Option<crate::RedisStore>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            key: KeySpec::default(),
            methods: policy::default_methods(),
            store_if: Arc::new(Successful),
            ttl: Duration::from_secs(60 * 60),
            l1_capacity: 64 * 1024 * 1024,
            max_request_body: 16 * 1024 * 1024,
            max_response_body: 16 * 1024 * 1024,
            cache_status: true,
            wait_timeout: Duration::from_secs(60),
            strict: false,
            #[cfg(feature = "redis")]
            redis: None,
        }
    }
}

/// One upstream call: the ready inner service of a Tower stack, or the rest
/// of a client middleware chain.
pub(crate) trait Upstream<ReqBody>: Send + 'static {
    type Body: Body + Send + 'static;
    type Error: Send + 'static;
    type Future: Future<Output = Result<Response<Self::Body>, Self::Error>> + Send + 'static;

    fn call(self, request: Request<ReqBody>) -> Self::Future;
}

/// Why a request skips the layer, decided from its head alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Skip {
    Method,
    NoStore,
}

type Answer<B, E> = Result<Response<ResponseBody<B>>, E>;

/// The leader's claim on a key in the shared store, kept alive while the
/// call runs.
struct Claim {
    lease: Option<Lease>,
    _renewal: Option<Renewal>,
}

/// What the leader's body task tells the leader's caller.
struct Started {
    head: Arc<Head>,
    reader: Reader,
}

pub(crate) struct Engine {
    config: Config,
    l1: MemoryStore,
    l2: L2,
    flights: Arc<Flights>,
    pub(crate) counters: Counters,
}

impl Engine {
    pub(crate) fn new(config: Config) -> Self {
        let l1 = MemoryStore::new(config.l1_capacity);
        #[cfg(feature = "redis")]
        let l2 = {
            if let Some(redis) = &config.redis {
                redis.attach(l1.clone());
            }
            L2::new(config.redis.clone(), &config.key.namespace)
        };
        #[cfg(not(feature = "redis"))]
        let l2 = L2::new(&config.key.namespace);
        Self {
            l1,
            l2,
            flights: Arc::new(Flights::new()),
            counters: Counters::default(),
            config,
        }
    }

    pub(crate) fn l2(&self) -> &L2 {
        &self.l2
    }

    /// Counts a request answered without an upstream call, here and in the
    /// fleet totals.
    fn tally(&self, local: &std::sync::atomic::AtomicU64, fleet: FleetCounter) {
        Counters::inc(local);
        self.l2.count(fleet, 1);
    }

    pub(crate) fn key(&self, head: &request::Parts, body: &[u8]) -> Option<Key> {
        self.config.key.key(head, body)
    }

    pub(crate) async fn purge(&self, key: &Key) {
        self.l1.remove(key).await;
        #[cfg(feature = "redis")]
        if let Some(redis) = self.l2.redis() {
            if let Err(error) = redis
                .purge(
                    &crate::store::redis::ns_tag(&self.config.key.namespace),
                    key,
                )
                .await
            {
                tracing::warn!(%error, "could not purge the entry from redis");
            }
        }
    }

    pub(crate) async fn purge_namespace(&self, namespace: &str) {
        self.l1.clear();
        #[cfg(feature = "redis")]
        if let Some(redis) = self.l2.redis() {
            if let Err(error) = redis
                .purge_namespace(&crate::store::redis::ns_tag(namespace))
                .await
            {
                tracing::warn!(%error, "could not purge the namespace from redis");
            }
        }
        #[cfg(not(feature = "redis"))]
        let _ = namespace;
    }

    pub(crate) fn l1(&self) -> &MemoryStore {
        &self.l1
    }

    pub(crate) fn flights_in_progress(&self) -> usize {
        self.flights.len()
    }

    /// Decides from the request head alone whether the engine is needed.
    pub(crate) fn classify(&self, method: &Method, headers: &HeaderMap) -> Result<Directive, Skip> {
        Counters::inc(&self.counters.requests);
        if !self.config.methods.contains(method) {
            Counters::inc(&self.counters.bypass_method);
            return Err(Skip::Method);
        }
        match policy::request_directive(headers) {
            Directive::NoStore => {
                Counters::inc(&self.counters.bypass_no_store);
                Err(Skip::NoStore)
            }
            directive => Ok(directive),
        }
    }

    /// The `cache-status` member for a skipped request, if the header is on.
    pub(crate) fn skip_status(&self, skip: Skip) -> Option<CacheStatus> {
        let status = match skip {
            Skip::Method => CacheStatus::Method,
            Skip::NoStore => CacheStatus::Bypass,
        };
        self.config.cache_status.then_some(status)
    }

    pub(crate) fn count_upstream_call(&self) {
        self.tally(&self.counters.upstream_calls, FleetCounter::UpstreamCalls);
    }

    /// Answers an eligible request; the response carries its [`Key`] in its
    /// extensions when it has one.
    pub(crate) async fn handle<B, U>(
        self: Arc<Self>,
        request: Request<B>,
        directive: Directive,
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
        let Some(key) = self.config.key.key(&parts, &body) else {
            Counters::inc(&self.counters.bypass_no_key);
            let request = Request::from_parts(parts, RequestBody::buffered(body));
            return self.forward(upstream, request).await;
        };

        let mut answer = self.answer(key, parts, body, directive, upstream).await;
        if let Ok(response) = &mut answer {
            response.extensions_mut().insert(key);
        }
        answer
    }

    async fn answer<B, U>(
        self: Arc<Self>,
        key: Key,
        parts: request::Parts,
        body: Bytes,
        directive: Directive,
        upstream: U,
    ) -> Answer<U::Body, U::Error>
    where
        U: Upstream<RequestBody<B>>,
        <U::Body as Body>::Error: Into<BoxError>,
    {
        if directive == Directive::Refresh {
            Counters::inc(&self.counters.refreshes);
            let request = Request::from_parts(parts, RequestBody::buffered(body));
            return self
                .lead(Flights::solo(key), upstream, request, None, true)
                .await;
        }

        if let Some(record) = self.l1.get(&key).await {
            return Ok(self.hit(&key, &record));
        }
        loop {
            match self.flights.join_or_lead(key) {
                Role::Follow(flight) => match flight.join().await {
                    Joined::Replay(record) => {
                        self.tally(&self.counters.coalesced, FleetCounter::Coalesced);
                        Counters::add(&self.counters.bytes_saved, record.body.len() as u64);
                        return Ok(self.replay(&record));
                    }
                    Joined::Live(head, reader) => {
                        self.tally(&self.counters.coalesced, FleetCounter::Coalesced);
                        return Ok(self.live(
                            &head,
                            &head.shared_headers,
                            reader,
                            CacheStatus::Collapsed,
                        ));
                    }
                    Joined::Retry => continue,
                },
                Role::Lead(leader) => {
                    // The look-up above may have raced a flight that stored
                    // its answer and left the map: this one is authoritative.
                    if let Some(record) = self.l1.get(&key).await {
                        leader.replay(Arc::clone(&record));
                        return Ok(self.hit(&key, &record));
                    }
                    let request = Request::from_parts(parts, RequestBody::buffered(body));
                    return self.lead_shared(leader, upstream, request).await;
                }
            }
        }
    }

    /// The local leader asks the shared store: a hit, the lease (then call
    /// upstream), or wait for the instance that holds it.
    async fn lead_shared<B, U>(
        self: &Arc<Self>,
        leader: Leader,
        upstream: U,
        request: Request<RequestBody<B>>,
    ) -> Answer<U::Body, U::Error>
    where
        U: Upstream<RequestBody<B>>,
        <U::Body as Body>::Error: Into<BoxError>,
    {
        let key = *leader.key();
        // Registered before the first look-up: a completion announced between
        // a look-up and the wait that follows it is not missed.
        let Some(watch) = self.l2.watch(key) else {
            self.tally(&self.counters.misses, FleetCounter::Misses);
            return self.lead(leader, upstream, request, None, false).await;
        };
        let deadline = Instant::now() + self.config.wait_timeout;
        loop {
            let notified = watch.notify().notified();
            let mut notified = pin!(notified);
            notified.as_mut().enable();
            match self.l2.lookup(&key).await {
                Lookup::Hit(record) => {
                    self.l1.insert(key, Arc::clone(&record)).await;
                    leader.replay(Arc::clone(&record));
                    self.tally(&self.counters.hits_l2, FleetCounter::HitsL2);
                    Counters::add(&self.counters.bytes_saved, record.body.len() as u64);
                    return Ok(self.replay(&record));
                }
                Lookup::Claimed(lease) => {
                    self.tally(&self.counters.misses, FleetCounter::Misses);
                    return self
                        .lead(leader, upstream, request, Some(lease), false)
                        .await;
                }
                Lookup::Garbage | Lookup::Unavailable => {
                    self.tally(&self.counters.misses, FleetCounter::Misses);
                    return self.lead(leader, upstream, request, None, false).await;
                }
                Lookup::Busy(lease_left) => {
                    let now = Instant::now();
                    if now >= deadline {
                        Counters::inc(&self.counters.wait_timeouts);
                        if self.config.strict {
                            return Ok(self.reject(Error::new(
                                ErrorKind::InFlight,
                                "another instance is still computing this response",
                            )));
                        }
                        self.tally(&self.counters.misses, FleetCounter::Misses);
                        return self.lead(leader, upstream, request, None, false).await;
                    }
                    // Woken by the notification; else look again when the
                    // lease could have run out, and at least every poll
                    // interval in case a message was lost.
                    let nap = (lease_left + Duration::from_millis(5))
                        .min(self.l2.poll_interval())
                        .min(deadline - now);
                    let _ = tokio::time::timeout(nap, notified).await;
                }
            }
        }
    }

    /// Calls upstream for a flight; a spawned task streams the body into it.
    async fn lead<B, U>(
        self: &Arc<Self>,
        leader: Leader,
        upstream: U,
        request: Request<RequestBody<B>>,
        lease: Option<Lease>,
        refresh: bool,
    ) -> Answer<U::Body, U::Error>
    where
        U: Upstream<RequestBody<B>>,
        <U::Body as Body>::Error: Into<BoxError>,
    {
        self.count_upstream_call();
        let renewal = lease
            .as_ref()
            .and_then(|lease| self.l2.keep_alive(leader.key(), lease));
        let claim = Claim {
            lease,
            _renewal: renewal,
        };
        let call = upstream.call(request);
        let (started_tx, started_rx) = oneshot::channel();
        // The call runs to completion in its own task even if this caller
        // goes away: it has been paid for, and followers may be waiting.
        let task = tokio::spawn(Arc::clone(self).record(leader, claim, call, started_tx));
        match started_rx.await {
            Ok(Ok(Started { head, reader })) => {
                let status = match (refresh, head.storable) {
                    (false, stored) => CacheStatus::Miss { stored },
                    (true, stored) => CacheStatus::Refresh { stored },
                };
                Ok(self.live(&head, &head.headers, reader, status))
            }
            Ok(Err(error)) => Err(error),
            // The task ended without a word: it panicked. Panic here too, as
            // the inner service would have without the layer.
            Err(_) => match task.await {
                Err(error) if error.is_panic() => panic::resume_unwind(error.into_panic()),
                _ => Ok(self.internal_error()),
            },
        }
    }

    /// The leader's body task: awaits the upstream call, publishes its head
    /// and chunks into the flight, and stores the record when complete.
    async fn record<F, RB, E>(
        self: Arc<Self>,
        mut leader: Leader,
        claim: Claim,
        call: F,
        started: oneshot::Sender<Result<Started, E>>,
    ) where
        F: Future<Output = Result<Response<RB>, E>>,
        RB: Body,
        RB::Error: Into<BoxError>,
    {
        let response = match call.await {
            Ok(response) => response,
            Err(error) => {
                Counters::inc(&self.counters.upstream_errors);
                let key = *leader.key();
                drop(leader); // abandons the flight: a follower takes over
                let _ = started.send(Err(error));
                // Let waiters on other instances take over now.
                self.l2.complete(&key, claim.lease.as_ref(), None).await;
                return;
            }
        };
        let (parts, body) = response.into_parts();
        let head = Arc::new(self.head(parts));
        let reader = leader.start(Arc::clone(&head));
        // If the caller is gone, its reader is dropped here; the call goes on.
        let _ = started.send(Ok(Started {
            head: Arc::clone(&head),
            reader,
        }));

        let limit = self.config.max_response_body as u64;
        let mut body = pin!(body);
        let mut trailers = None;
        let failure: Option<BoxError> = loop {
            if !leader.room(self.config.max_response_body).await {
                // Too large to store, and nobody is left to serve.
                break Some("every reader of an oversized response went away".into());
            }
            let frame = match body.as_mut().frame().await {
                None => break None,
                Some(Err(error)) => break Some(error.into()),
                Some(Ok(frame)) => frame,
            };
            match frame.into_data() {
                Ok(mut data) => {
                    leader.push(data.copy_to_bytes(data.remaining()), limit);
                }
                Err(frame) => trailers = frame.into_trailers().ok(),
            }
        };
        if let Some(error) = failure {
            let key = *leader.key();
            leader.fail(error);
            return self.l2.complete(&key, claim.lease.as_ref(), None).await;
        }
        let completed = leader.complete(trailers.clone());
        Counters::add(
            &self.counters.bytes_saved,
            completed.followers * completed.received,
        );
        let mut stored = None;
        if let (true, Some(body)) = (head.storable, completed.body) {
            let now = now_millis();
            let record = Record {
                status: head.status,
                version: head.version,
                headers: head.shared_headers.clone(),
                body,
                trailers,
                created_at: now,
                expires_at: now.saturating_add(self.config.ttl.as_millis() as u64),
                meta: Bytes::new(),
            };
            let record = Arc::new(record);
            self.l1.insert(*leader.key(), Arc::clone(&record)).await;
            self.tally(&self.counters.stored, FleetCounter::Stored);
            stored = Some(record);
        }
        // Dropping the leader takes the flight out of the map, after the
        // record is in L1: a newcomer finds one or the other.
        let key = *leader.key();
        drop(leader);
        self.l2
            .complete(&key, claim.lease.as_ref(), stored.as_deref())
            .await;
    }

    fn head(&self, parts: response::Parts) -> Head {
        let content_length = policy::content_length(&parts.headers);
        let storable = !policy::response_forbids_storing(&parts.headers)
            && content_length.is_none_or(|len| len <= self.config.max_response_body as u64)
            && self.config.store_if.should_store(&parts);
        Head {
            status: parts.status,
            version: parts.version,
            shared_headers: policy::shareable_headers(&parts.headers),
            headers: parts.headers,
            content_length,
            storable,
        }
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
        let mut response = upstream.call(request).await?.map(ResponseBody::inner);
        self.mark(response.headers_mut(), CacheStatus::Bypass);
        Ok(response)
    }

    fn hit<B>(&self, key: &Key, record: &Record) -> Response<ResponseBody<B>> {
        self.tally(&self.counters.hits_l1, FleetCounter::HitsL1);
        self.l2.count_l1_hit(key);
        Counters::add(&self.counters.bytes_saved, record.body.len() as u64);
        self.replay(record)
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

    fn reject<B>(&self, error: Error) -> Response<ResponseBody<B>> {
        let status = match error.kind() {
            ErrorKind::RequestBody => StatusCode::BAD_REQUEST,
            ErrorKind::InFlight => StatusCode::CONFLICT,
        };
        let mut response =
            Response::new(ResponseBody::replay(Bytes::from(error.to_string()), None));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
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
