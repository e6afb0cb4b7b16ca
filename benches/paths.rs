//! The miss and hit paths end to end, against the bare application and the
//! peers, in one run so that every ratio compares figures measured together.
//!
//! The application is an axum `Router` with two handlers that answer a fixed
//! ~1 KiB JSON body at once: `GET /v1/answer` and `POST /v1/chat/completions`
//! (which reads its body). Each request is a `oneshot` on a clone of the
//! contender's router, on a 2-worker multi-thread runtime, and its response
//! body is read whole. The contenders:
//!
//! - `bare`: the router alone;
//! - `ours`: `.layer(IdempotencyLayer::new())`, the default configuration
//!   (JSON canonicalised, default vary headers, moka L1, no L2);
//! - `axum_idempotent`: `axum-idempotent` 0.6 over a `ruts` moka session
//!   store, as `examples/loadgen.rs` sets it up (a session cookie is
//!   established first; it caches only for a request that has one);
//! - `tower_http_cache`: `tower-http-cache` 0.6 with its in-memory backend,
//!   for GET only (it caches GET and HEAD);
//! - `floor` (hits only): the least a layer that keys requests by content
//!   and replays stored answers must do: buffer the body, one SHA-256 of
//!   the method, path and query, the default vary headers (names and
//!   values) and the raw body, one moka `get`, and a response built from
//!   the stored status, headers and body. No `age`, no `cache-status`, no
//!   statistics, no single flight.
//!
//! Cases: `get_hit`, `post_hit` (the same request every time, warmed so
//! every measured one is a hit), `get_miss`, `post_miss` (a query or a
//! body unique to each request). Each runs `seq` (one task, one request at
//! a time) and `x8` (eight tasks at once); the time is per request.
//!
//! ```text
//! cargo bench --bench paths -- --measurement-time 2 --warm-up-time 0.5
//! ```

use std::{
    convert::Infallible,
    hint::black_box,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use axum::{
    error_handling::HandleErrorLayer,
    http::{header, HeaderValue, StatusCode},
    routing::{get, post},
    Router,
};
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::Request;
use http_body_util::BodyExt;
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_idempotency::IdempotencyLayer;

const PROMPT: &str = r#"{"model":"gpt-4o-mini","temperature":0,"messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Describe the attached product photo in one sentence."}]}"#;

/// A chat-completions answer of about 1 KiB.
fn answer_body() -> Bytes {
    let text = "The photo shows a red canvas sneaker with a white rubber sole, \
                photographed from the side on a plain grey background. "
        .repeat(7);
    let body = serde_json::json!({
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "gpt-4o-mini",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": "stop"
        }],
        "usage": {"prompt_tokens": 52, "completion_tokens": 180, "total_tokens": 232}
    });
    Bytes::from(serde_json::to_vec(&body).unwrap())
}

fn handlers(answer: Bytes, calls: Arc<AtomicU64>) -> Router {
    let respond = move || {
        let answer = answer.clone();
        calls.fetch_add(1, Ordering::Relaxed);
        async move { ([(header::CONTENT_TYPE, "application/json")], answer) }
    };
    let on_post = respond.clone();
    Router::new()
        .route(
            "/v1/chat/completions",
            post(move |_prompt: Bytes| on_post()),
        )
        .route("/v1/answer", get(respond))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Contender {
    Bare,
    Ours,
    AxumIdempotent,
    TowerHttpCache,
    Floor,
}

impl Contender {
    fn name(self) -> &'static str {
        match self {
            Self::Bare => "bare",
            Self::Ours => "ours",
            Self::AxumIdempotent => "axum_idempotent",
            Self::TowerHttpCache => "tower_http_cache",
            Self::Floor => "floor",
        }
    }
}

/// A contender's router, the cookie its requests carry, and its handler's
/// call count.
#[derive(Clone)]
struct App {
    router: Router,
    cookie: Option<HeaderValue>,
    calls: Arc<AtomicU64>,
}

async fn app(contender: Contender) -> App {
    let calls = Arc::new(AtomicU64::new(0));
    let answer = answer_body();
    let router = match contender {
        Contender::Bare => handlers(answer, Arc::clone(&calls)),
        Contender::Ours => handlers(answer, Arc::clone(&calls)).layer(IdempotencyLayer::new()),
        Contender::AxumIdempotent => peers::axum_idempotent(handlers(answer, Arc::clone(&calls))),
        Contender::TowerHttpCache => peers::tower_http_cache(answer, Arc::clone(&calls)),
        Contender::Floor => handlers(answer, Arc::clone(&calls)).layer(floor::FloorLayer::new()),
    };
    let cookie = match contender {
        Contender::AxumIdempotent => Some(peers::establish_session(&router).await),
        _ => None,
    };
    App {
        router,
        cookie,
        calls,
    }
}

#[derive(Clone, Copy)]
enum Case {
    GetHit,
    PostHit,
    GetMiss,
    PostMiss,
}

impl Case {
    fn name(self) -> &'static str {
        match self {
            Self::GetHit => "get_hit",
            Self::PostHit => "post_hit",
            Self::GetMiss => "get_miss",
            Self::PostMiss => "post_miss",
        }
    }

    fn contenders(self) -> &'static [Contender] {
        use Contender::*;
        match self {
            // The floor last, so that the other rows run as they always did.
            Self::GetHit => &[Bare, Ours, AxumIdempotent, TowerHttpCache, Floor],
            Self::PostHit => &[Bare, Ours, AxumIdempotent, Floor],
            Self::GetMiss => &[Bare, Ours, AxumIdempotent, TowerHttpCache],
            Self::PostMiss => &[Bare, Ours, AxumIdempotent],
        }
    }

    fn hit(self) -> bool {
        matches!(self, Self::GetHit | Self::PostHit)
    }
}

/// Unique across the whole run, so a miss is never a hit by accident.
static SEQ: AtomicU64 = AtomicU64::new(0);

fn request(case: Case, cookie: Option<&HeaderValue>) -> Request<axum::body::Body> {
    let mut request = match case {
        Case::GetHit => Request::get("/v1/answer?q=sneaker")
            .body(axum::body::Body::empty())
            .unwrap(),
        Case::GetMiss => {
            let n = SEQ.fetch_add(1, Ordering::Relaxed);
            Request::get(format!("/v1/answer?q=sneaker-{n}"))
                .body(axum::body::Body::empty())
                .unwrap()
        }
        Case::PostHit | Case::PostMiss => {
            let body = match case {
                Case::PostMiss => {
                    let n = SEQ.fetch_add(1, Ordering::Relaxed);
                    Bytes::from(PROMPT.replace("one sentence", &format!("one sentence, #{n}")))
                }
                _ => Bytes::from_static(PROMPT.as_bytes()),
            };
            Request::post("/v1/chat/completions")
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::AUTHORIZATION, "Bearer sk-bench-0123456789abcdef")
                .body(axum::body::Body::from(body))
                .unwrap()
        }
    };
    if let Some(cookie) = cookie {
        request.headers_mut().insert(header::COOKIE, cookie.clone());
    }
    request
}

async fn one(app: &App, case: Case) -> usize {
    let response = app
        .router
        .clone()
        .oneshot(request(case, app.cookie.as_ref()))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .len()
}

/// Requests measured so far, for a per-request count of instructions
/// (`PATHS_COUNT=1 perf stat -e instructions:u <bench binary> --bench
/// --profile-time 5 <one bench>`), which another process's load on the
/// cores does not move.
static REQUESTS: AtomicU64 = AtomicU64::new(0);

/// `iters` requests over `width` tasks; the elapsed time.
async fn run(app: &App, case: Case, width: u64, iters: u64) -> Duration {
    REQUESTS.fetch_add(iters, Ordering::Relaxed);
    let start = Instant::now();
    let tasks: Vec<_> = (0..width)
        .map(|t| {
            let app = app.clone();
            // Spread `iters` over the tasks, the remainder to the first ones.
            let n = iters / width + u64::from(t < iters % width);
            tokio::spawn(async move {
                for _ in 0..n {
                    black_box(one(&app, case).await);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    start.elapsed()
}

fn bench_paths(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for case in [Case::GetHit, Case::PostHit, Case::GetMiss, Case::PostMiss] {
        let mut group = c.benchmark_group(case.name());
        for (width_name, width) in [("seq", 1), ("x8", 8)] {
            for &contender in case.contenders() {
                let app = runtime.block_on(app(contender));
                if case.hit() {
                    // Warm: the first call stores.
                    runtime.block_on(one(&app, case));
                }
                let before = app.calls.load(Ordering::Relaxed);
                group.bench_function(BenchmarkId::new(contender.name(), width_name), |b| {
                    b.iter_custom(|iters| runtime.block_on(run(&app, case, width, iters)))
                });
                let calls = app.calls.load(Ordering::Relaxed) - before;
                if case.hit() && contender != Contender::Bare {
                    assert_eq!(calls, 0, "{}: every measured call a hit", contender.name());
                }
            }
        }
        group.finish();
    }
    if std::env::var_os("PATHS_COUNT").is_some() {
        eprintln!("requests: {}", REQUESTS.load(Ordering::Relaxed));
    }
}

mod peers {
    //! The peers, configured as their READMEs show (as in `examples/loadgen.rs`).

    use super::*;
    use axum_idempotent::{IdempotentLayer, IdempotentOptions};
    use ruts::{
        store::{moka::MokaStore, Ttl},
        CookieOptions, Session, SessionLayer,
    };
    use tower_cookies::CookieManagerLayer;
    use tower_http_cache::prelude::{CacheLayer, InMemoryBackend};

    pub(super) fn axum_idempotent(app: Router) -> Router {
        let store = Arc::new(MokaStore::builder().build());
        app.route(
            "/login",
            post(|session: Session<MokaStore>| async move {
                session
                    .set("user", &"bench", Ttl::new(3600).unwrap(), None)
                    .await
                    .unwrap();
                "ok"
            }),
        )
        .layer(IdempotentLayer::<MokaStore>::new(
            IdempotentOptions::default().expire_after(3600),
        ))
        .layer(
            SessionLayer::new(store).with_cookie_options(
                CookieOptions::build()
                    .name("session")
                    .max_age(3600)
                    .path("/"),
            ),
        )
        .layer(CookieManagerLayer::new())
    }

    pub(super) async fn establish_session(router: &Router) -> HeaderValue {
        let request = Request::post("/login")
            .body(axum::body::Body::empty())
            .unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        let cookie = response
            .headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .find_map(|c| {
                let c = c.to_str().ok()?;
                c.starts_with("session=")
                    .then(|| c.split(';').next().unwrap().to_owned())
            })
            .expect("a session cookie");
        HeaderValue::from_str(&cookie).unwrap()
    }

    pub(super) fn tower_http_cache(answer: Bytes, calls: Arc<AtomicU64>) -> Router {
        let cache = CacheLayer::builder(InMemoryBackend::new(10_000))
            .ttl(Duration::from_secs(3600))
            .build();
        let handler = tower::service_fn(move |_: axum::extract::Request| {
            let answer = answer.clone();
            calls.fetch_add(1, Ordering::Relaxed);
            async move {
                Ok::<_, Infallible>(
                    http::Response::builder()
                        .header(header::CONTENT_TYPE, "application/json")
                        .body(http_body_util::Full::new(answer))
                        .unwrap(),
                )
            }
        });
        let service = ServiceBuilder::new()
            .layer(HandleErrorLayer::new(|error: BoxError| async move {
                (StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
            }))
            .layer(cache)
            .service(handler);
        Router::new().route_service("/v1/answer", service)
    }
}

mod floor {
    //! The floor of a hit (see the module docs): what is unavoidable, and
    //! nothing else, shaped like a layer so that it runs under the same
    //! router as the others.

    use std::{
        future::Future,
        pin::Pin,
        task::{Context, Poll},
    };

    use axum::body::Body;
    use http::{HeaderMap, HeaderName, Response};
    use sha2::{Digest, Sha256};
    use tower::{Layer, Service};

    use super::*;

    struct Stored {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    }

    type Cache = moka::future::Cache<[u8; 32], Arc<Stored>>;

    #[derive(Clone)]
    pub(super) struct FloorLayer {
        cache: Cache,
        vary: Arc<[HeaderName]>,
    }

    impl FloorLayer {
        pub(super) fn new() -> Self {
            // The default vary headers of `IdempotencyLayer`.
            let vary = [
                "authorization",
                "cookie",
                "content-type",
                "accept",
                "accept-encoding",
                "x-api-key",
                "api-key",
                "x-goog-api-key",
                "x-goog-user-project",
                "anthropic-version",
                "anthropic-beta",
                "openai-organization",
                "openai-project",
                "openai-beta",
            ]
            .map(HeaderName::from_static);
            Self {
                cache: Cache::new(10_000),
                vary: Arc::from(vary),
            }
        }
    }

    impl<S> Layer<S> for FloorLayer {
        type Service = Floor<S>;

        fn layer(&self, inner: S) -> Floor<S> {
            Floor {
                inner,
                cache: self.cache.clone(),
                vary: Arc::clone(&self.vary),
            }
        }
    }

    #[derive(Clone)]
    pub(super) struct Floor<S> {
        inner: S,
        cache: Cache,
        vary: Arc<[HeaderName]>,
    }

    /// The key material, gathered in one buffer and hashed once.
    fn key(vary: &[HeaderName], parts: &http::request::Parts, body: &[u8]) -> [u8; 32] {
        let mut material = Vec::with_capacity(512);
        material.extend_from_slice(parts.method.as_str().as_bytes());
        material.push(0);
        if let Some(path) = parts.uri.path_and_query() {
            material.extend_from_slice(path.as_str().as_bytes());
        }
        for name in vary {
            material.push(0);
            material.extend_from_slice(name.as_str().as_bytes());
            for value in parts.headers.get_all(name) {
                material.push(0);
                material.extend_from_slice(value.as_bytes());
            }
        }
        material.push(0);
        material.extend_from_slice(body);
        Sha256::digest(&material).into()
    }

    impl<S> Service<Request<Body>> for Floor<S>
    where
        S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
    {
        type Response = Response<Body>;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            self.inner.poll_ready(cx)
        }

        fn call(&mut self, request: Request<Body>) -> Self::Future {
            let clone = self.inner.clone();
            let mut inner = std::mem::replace(&mut self.inner, clone);
            let cache = self.cache.clone();
            let vary = Arc::clone(&self.vary);
            Box::pin(async move {
                let (parts, body) = request.into_parts();
                let body = body
                    .collect()
                    .await
                    .map(|c| c.to_bytes())
                    .unwrap_or_default();
                let key = key(&vary, &parts, &body);
                if let Some(stored) = cache.get(&key).await {
                    let mut response = Response::new(Body::from(stored.body.clone()));
                    *response.status_mut() = stored.status;
                    *response.headers_mut() = stored.headers.clone();
                    return Ok(response);
                }
                let response = inner
                    .call(Request::from_parts(parts, Body::from(body)))
                    .await?;
                let (head, body) = response.into_parts();
                let body = body
                    .collect()
                    .await
                    .map(|c| c.to_bytes())
                    .unwrap_or_default();
                let stored = Stored {
                    status: head.status,
                    headers: head.headers.clone(),
                    body: body.clone(),
                };
                cache.insert(key, Arc::new(stored)).await;
                Ok(Response::from_parts(head, Body::from(body)))
            })
        }
    }
}

/// The L1's cost on a miss: one insert of a fresh key (a ~1 KiB answer)
/// into the layer's L1 (`ours`: two segments, a byte weigher, per-entry
/// expiry, an eviction listener on the protected one), against moka with
/// an entry count only (`moka_plain`) and with a weigher and per-entry
/// expiry (`moka_weighed_expiring`), each sized like the default L1
/// (64 MiB). Fresh keys all along: the tables grow and then evict, as
/// under a flood of misses.
fn bench_l1_insert(c: &mut Criterion) {
    use moka::{future::Cache, Expiry};

    struct Hour;
    impl Expiry<[u8; 32], Bytes> for Hour {
        fn expire_after_create(&self, _: &[u8; 32], _: &Bytes, _: Instant) -> Option<Duration> {
            Some(Duration::from_secs(3600))
        }
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let body = answer_body();
    let key = || {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&n.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes());
        key[8..16].copy_from_slice(&n.to_be_bytes());
        key
    };
    let mut group = c.benchmark_group("l1_insert");
    let ours = tower_idempotency::__fuzz::L1::new(64 << 20);
    group.bench_function("ours", |b| {
        b.to_async(&runtime)
            .iter(|| ours.insert(key(), body.clone()))
    });
    let plain: Cache<[u8; 32], Bytes> = Cache::new((64 << 20) / 2048);
    group.bench_function("moka_plain", |b| {
        b.to_async(&runtime)
            .iter(|| plain.insert(key(), body.clone()))
    });
    let weighed: Cache<[u8; 32], Bytes> = Cache::builder()
        .max_capacity(64 << 20)
        .weigher(|_, body: &Bytes| body.len() as u32 + 1000)
        .expire_after(Hour)
        .build();
    group.bench_function("moka_weighed_expiring", |b| {
        b.to_async(&runtime)
            .iter(|| weighed.insert(key(), body.clone()))
    });
    group.finish();
}

/// What a miss cannot avoid, for the reader of the ratios above: the L1
/// insert a stored answer costs (moka, configured as the layer's L1:
/// a byte-weighed LRU segment with per-entry expiry, a fast hasher; then
/// the invalidation of the other segment, as `MemoryStore::insert` does),
/// and a task spawned and awaited per request (what the recording of a
/// miss cost while it always ran in a task of its own). Each row's time is
/// per operation; `floor/bare_get/seq` is the bare GET of `get_miss` again,
/// in this group's run.
fn bench_floor(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("floor");
    let bare = runtime.block_on(app(Contender::Bare));
    group.bench_function("bare_get/seq", |b| {
        b.iter_custom(|iters| runtime.block_on(run(&bare, Case::GetMiss, 1, iters)))
    });

    let (probation, protected) = miss_floor::l1();
    let answer = answer_body();
    group.bench_function("l1_insert/seq", |b| {
        b.iter_custom(|iters| {
            REQUESTS.fetch_add(iters, Ordering::Relaxed);
            runtime.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let key = miss_floor::next_key();
                    probation.insert(key, Arc::new(answer.clone())).await;
                    protected.invalidate(&key).await;
                }
                start.elapsed()
            })
        })
    });
    group.bench_function("spawn/seq", |b| {
        b.iter_custom(|iters| {
            REQUESTS.fetch_add(iters, Ordering::Relaxed);
            runtime.block_on(async {
                let start = Instant::now();
                for i in 0..iters {
                    black_box(tokio::spawn(async move { black_box(i) }).await.unwrap());
                }
                start.elapsed()
            })
        })
    });
    group.finish();
    if std::env::var_os("PATHS_COUNT").is_some() {
        eprintln!("requests: {}", REQUESTS.load(Ordering::Relaxed));
    }
}

mod miss_floor {
    //! A stand-in for the layer's L1 (`src/store/memory.rs`, crate-private).

    use std::{
        hash::{BuildHasher, Hasher},
        sync::{
            atomic::{AtomicU64, Ordering},
            Arc,
        },
        time::{Duration, Instant},
    };

    use bytes::Bytes;
    use moka::{future::Cache, policy::EvictionPolicy, Expiry};

    pub(super) type Key = [u8; 32];
    pub(super) type L1 = Cache<Key, Arc<Bytes>, Fast>;

    /// Keys are digests: a hasher that folds their first eight bytes, as
    /// cheap as the layer's keyed one.
    #[derive(Clone, Default)]
    pub(super) struct Fast;

    pub(super) struct FastHasher(u64);

    impl BuildHasher for Fast {
        type Hasher = FastHasher;
        fn build_hasher(&self) -> FastHasher {
            FastHasher(0x243f_6a88_85a3_08d3)
        }
    }

    impl Hasher for FastHasher {
        fn write(&mut self, bytes: &[u8]) {
            for chunk in bytes.chunks(8) {
                let mut word = [0u8; 8];
                word[..chunk.len()].copy_from_slice(chunk);
                let product = u128::from(self.0 ^ u64::from_le_bytes(word)) * 0x243f_6a88_85a3_08d3;
                self.0 = (product as u64) ^ ((product >> 64) as u64);
            }
        }
        fn finish(&self) -> u64 {
            self.0
        }
    }

    struct AnHour;

    impl Expiry<Key, Arc<Bytes>> for AnHour {
        fn expire_after_create(&self, _: &Key, _: &Arc<Bytes>, _: Instant) -> Option<Duration> {
            Some(Duration::from_secs(3600))
        }
    }

    /// Probation and protected segments, sized as the default layer's.
    pub(super) fn l1() -> (L1, L1) {
        let capacity: u64 = 64 * 1024 * 1024;
        let segment = |capacity: u64| {
            Cache::builder()
                .max_capacity(capacity)
                .eviction_policy(EvictionPolicy::lru())
                .weigher(|_: &Key, body: &Arc<Bytes>| 256 + body.len() as u32)
                .expire_after(AnHour)
                .build_with_hasher(Fast)
        };
        (segment(capacity / 5 * 4), segment(capacity / 5))
    }

    static NEXT: AtomicU64 = AtomicU64::new(1);

    /// A fresh key spread like a digest (SplitMix64 of a counter).
    pub(super) fn next_key() -> Key {
        let mut x = NEXT.fetch_add(1, Ordering::Relaxed);
        let mut key = [0u8; 32];
        for word in key.chunks_mut(8) {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            word.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
        key
    }
}

criterion_group!(benches, bench_paths, bench_floor, bench_l1_insert);
criterion_main!(benches);
