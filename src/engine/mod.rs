//! The engine: from a request to its answer, free of Tower plumbing.
//!
//! ```text
//! request ─► policy ─► body ─► key ─► L1 ─► flight ─► L2 ─► upstream
//!              │        │            hit│     │follower hit│      │
//!            bypass  too large     replay  shares the   replay   tee: stream to
//!                                          leader's             the caller, record for
//!                                          response             L1 and L2, wake waiters
//! ```
//!
//! The Tower service and the reqwest middleware are thin adapters: each asks
//! [`Engine::classify`] about the request head, then hands the engine the
//! request and an [`Upstream`], and gets a response back. [`Engine::handle`]
//! reads the path above in order; each step has its own file:
//!
//! | step | file |
//! |---|---|
//! | policy, from the head | `crate::policy` |
//! | body, key and storage terms | `key.rs` (the buffering is `crate::body`) |
//! | L1, then the flight map: lead or follow | `lookup.rs` |
//! | L2: hit, lease, or wait for another instance | `shared.rs` |
//! | the upstream call, and bypasses | `upstream.rs` |
//! | stream and record the leader's response, store it | `tee.rs` |
//! | the caller's response: replay, live, rejection | `respond.rs` |
//! | counters, metrics, span; savings | `observe.rs` |
//! | what the `ai` feature adds | `ai.rs` |

mod ai;
mod buckets;
mod key;
mod lookup;
mod observe;
mod respond;
mod shared;
mod tee;
mod upstream;

use std::{sync::Arc, time::Duration};

use http::{HeaderMap, HeaderValue, Method, Request};
use http_body::Body;
use tracing::Instrument;

pub(crate) use self::buckets::MAX_BUCKETS;
use self::{
    key::Job,
    observe::{Bypass, Outcome},
    upstream::Pending,
};
pub(crate) use self::{
    shared::Relay,
    upstream::{Answer, Lead, Upstream},
};
use crate::{
    body::{buffer, Buffered, RequestBody},
    builder::KeyHeader,
    error::{BoxError, Error, ErrorKind},
    flight::Flights,
    idempotency_key,
    key::{Aliases, Key, KeySpec},
    policy::{self, control, default_methods, Classified, Plan, Skip, StorePredicate, Successful},
    stats::{Counters, Stats},
    store::{Backend, MemoryStore, L2},
    tenants::Tenants,
};

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
    /// What the `ai` feature adds: prices and the sampling policy.
    pub(crate) ai: ai::Settings,
    /// The L2, if any: Redis or a SQLite file.
    pub(crate) l2: Backend,
    /// Per-tenant counting: the table's capacity and its secret, if set.
    pub(crate) tenants: Option<(usize, Option<[u8; 32]>)>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            key: KeySpec::default(),
            methods: default_methods(),
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
            ai: ai::Settings::default(),
            l2: Backend::None,
            tenants: None,
        }
    }
}

pub(crate) struct Engine {
    config: Config,
    l1: MemoryStore,
    l2: L2,
    /// The default namespace's tag in the shared store.
    ns: Arc<str>,
    flights: Arc<Flights>,
    /// Raw digests of requests keyed before, and their keys.
    aliases: Aliases,
    pub(crate) counters: Counters,
    /// Per-tenant savings, when counted.
    tenants: Option<Tenants>,
    /// The local counts of sample buckets.
    buckets: buckets::Buckets,
}

impl Engine {
    pub(crate) fn new(config: Config) -> Self {
        let l1 = MemoryStore::new(config.l1_capacity);
        let l2 = L2::new(config.l2.clone(), &l1);
        Self {
            l1,
            ns: l2.tag(&config.key.namespace).into(),
            l2,
            flights: Arc::new(Flights::new(config.max_recording_bytes)),
            aliases: Aliases::default(),
            counters: Counters::default(),
            buckets: buckets::Buckets::default(),
            tenants: config
                .tenants
                .map(|(capacity, secret)| Tenants::new(capacity, secret)),
            config,
        }
    }

    pub(crate) fn stats(&self) -> Stats {
        let mut stats = self.counters.snapshot(self.l2.health());
        if let Some(tenants) = &self.tenants {
            stats.tenants = tenants.snapshot();
        }
        stats
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
        let ns = namespace.map_or_else(|| self.ns.clone(), |ns| self.l2.tag(ns).into());
        self.l2.purge(&ns, key).await;
    }

    pub(crate) async fn purge_namespace(&self, namespace: &str) {
        self.l1.clear();
        self.l2.purge_namespace(&self.l2.tag(namespace)).await;
    }

    /// Counts a request a client adapter sends on uncached because it cannot
    /// know the headers it will be sent with.
    #[cfg(feature = "reqwest")]
    pub(crate) fn count_unknown_headers(&self) {
        self.count_request();
        self.observe(Outcome::Bypass(Bypass::NoKey));
    }

    /// Decides from the request head alone whether the engine is needed, and
    /// consumes the control headers. A skipped request is counted here, as
    /// the upstream call it becomes: the adapter sends it on, and adds
    /// [`skip_status`](Self::skip_status) to its response.
    pub(crate) fn classify(&self, method: &Method, headers: &mut HeaderMap) -> Classified {
        self.count_request();
        let verdict = policy::classify(&self.config, method, headers);
        if let Classified::Skip(skip) = verdict {
            self.observe(Outcome::Bypass(match skip {
                Skip::Method => Bypass::Method,
                Skip::NoStore => Bypass::NoStore,
            }));
        }
        verdict
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
        // Body: buffered for the key, up to the limit.
        let (parts, body) = request.into_parts();
        let body = match buffer(body, self.config.max_request_body).await {
            Buffered::Complete(bytes) => bytes,
            Buffered::Passthrough(body) => {
                let request = Request::from_parts(parts, body);
                return self.forward(upstream, request, Bypass::TooLarge).await;
            }
            Buffered::Failed(error) => {
                return Ok(self.reject(Error::new(ErrorKind::RequestBody, error)));
            }
        };

        // Storage terms: the plan's TTL, bounded by the sampling policy.
        let ttl = plan.ttl.unwrap_or(self.config.ttl);
        let Some((ttl, sampled_buckets)) = ai::sampled(&self.config.ai, &body, ttl) else {
            let request = Request::from_parts(parts, RequestBody::buffered(body));
            return self.forward(upstream, request, Bypass::Sampling).await;
        };

        // Key: the content's, or the `Idempotency-Key` header's.
        let namespace = plan
            .namespace
            .as_deref()
            .unwrap_or(&self.config.key.namespace);
        let (key, fingerprint) = match self.identify(namespace, &parts, &body) {
            Ok(Some(identity)) => identity,
            Ok(None) => {
                let request = Request::from_parts(parts, RequestBody::buffered(body));
                return self.forward(upstream, request, Bypass::NoKey).await;
            }
            Err(error) => return Ok(self.reject(error)),
        };
        let ns = match &plan.namespace {
            Some(namespace) => self.l2.tag(namespace).into(),
            None => self.ns.clone(),
        };
        let explained = plan.explain.then(|| {
            let explained =
                self.config
                    .key
                    .explain(namespace, &parts, &body, fingerprint.is_some(), &key);
            HeaderValue::try_from(explained).ok()
        });
        let mut job = Job {
            key,
            ns,
            ttl,
            fingerprint,
            refresh: plan.refresh,
            tenant: self
                .tenants
                .as_ref()
                .and_then(|tenants| tenants.identify(&parts.headers)),
            bucketed: false,
        };
        // Sample buckets: a key of its own per bucket. Not in
        // `Idempotency-Key` mode, where a key names one answer.
        if let Some(n) = plan.buckets.or(sampled_buckets) {
            if job.fingerprint.is_none() {
                self.pick_bucket(&mut job, n).await;
            }
        }
        let key = job.key;

        // L1, the flight map, L2, and upstream if nothing answers.
        let pending = Pending {
            job,
            parts,
            body,
            upstream,
        };
        let span = tracing::debug_span!("idempotency", key = ?key, outcome = tracing::field::Empty);
        let mut answer = Arc::clone(&self).answer(pending).instrument(span).await;
        if let Ok(response) = &mut answer {
            response.extensions_mut().insert(key);
            if let Some(Some(explained)) = explained {
                response.headers_mut().insert(control::EXPLAIN, explained);
            }
        }
        answer
    }
}
