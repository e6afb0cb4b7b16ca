//! End-to-end load over loopback HTTP: axum servers with and without the
//! layer (and with peer crates), driven by an in-process hyper client.
//!
//! Everything runs in one process on one Tokio runtime (2 workers by
//! default), servers and client alike, on 127.0.0.1 only. Every run is
//! bounded in time (`--duration`) and in count (`--max-requests`) and stops
//! by itself.
//!
//! Scenarios (`--scenario`, default `all`):
//!
//! - `bare`: an axum handler returning a fixed ~1 KiB JSON body, no layer;
//! - `hits`: the same with `IdempotencyLayer`, warmed, so every request is
//!   an L1 hit;
//! - `misses`: every request unique, against a handler that sleeps
//!   `--latency-ms` (20 ms), with and without the layer;
//! - `peers-coalesce`: `--burst` (100) concurrent identical requests against
//!   a handler that sleeps `--burst-latency-ms`; counts the handler calls
//!   for no layer, ours, `axum-idempotent` and `tower-http-cache`;
//! - `peers-hits`: hit throughput of the same four, warmed.
//!
//! Throughput comparisons run `--rounds` times with the contenders
//! alternating, and report medians: the machine's speed may drift while
//! they run. Besides requests per second and latency, each run reports the
//! CPU time the process spent per request (servers and client together),
//! which other processes competing for the cores do not move.
//!
//! ```text
//! cargo run --release --example loadgen -- --duration 5 --concurrency 64 --scenario all
//! ```

use std::{
    convert::Infallible,
    fmt,
    net::SocketAddr,
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
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use tokio::{net::TcpListener, task::JoinHandle};
use tower::{BoxError, ServiceBuilder};
use tower_idempotency::IdempotencyLayer;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

#[derive(Parser, Debug)]
#[command(about = "Loopback load runs for tower-idempotency and its peers")]
struct Args {
    /// Which scenario to run.
    #[arg(long, value_enum, default_value_t = Scenario::All)]
    scenario: Scenario,
    /// Seconds of measured load per throughput run.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Seconds of unmeasured load before each throughput run.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Concurrent client tasks (each one request at a time).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Hard cap on requests per run, warm-up included.
    #[arg(long, default_value_t = 5_000_000)]
    max_requests: u64,
    /// Handler latency in the `misses` scenario, in milliseconds.
    #[arg(long, default_value_t = 20)]
    latency_ms: u64,
    /// Concurrent identical requests in `peers-coalesce`.
    #[arg(long, default_value_t = 100)]
    burst: usize,
    /// Handler latency in `peers-coalesce`, in milliseconds.
    #[arg(long, default_value_t = 200)]
    burst_latency_ms: u64,
    /// Bursts per contender in `peers-coalesce`.
    #[arg(long, default_value_t = 3)]
    burst_rounds: usize,
    /// Rounds of each throughput comparison; contenders alternate within a
    /// round and the medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Build our layer with `raw_body()` (hash JSON bodies byte for byte),
    /// to see what JSON canonicalisation costs end to end.
    #[arg(long)]
    raw_body: bool,
    /// Tokio worker threads, shared by the servers and the client.
    #[arg(long, default_value_t = 2)]
    workers: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Bare,
    Hits,
    Misses,
    PeersCoalesce,
    PeersHits,
    All,
}

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

const PROMPT: &str = r#"{"model":"gpt-4o-mini","temperature":0,"messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Describe the attached product photo in one sentence."}]}"#;

/// The handlers every contender wraps: `POST /v1/chat/completions` (reads
/// the body) and `GET /v1/answer`, both answering the fixed body after
/// `latency`, and counting their calls.
fn handlers(answer: Bytes, calls: Arc<AtomicU64>, latency: Duration) -> Router {
    let respond = move || {
        let answer = answer.clone();
        let calls = Arc::clone(&calls);
        async move {
            calls.fetch_add(1, Ordering::Relaxed);
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            ([(header::CONTENT_TYPE, "application/json")], answer)
        }
    };
    let on_post = respond.clone();
    Router::new()
        .route(
            "/v1/chat/completions",
            post(move |_prompt: Bytes| on_post()),
        )
        .route("/v1/answer", get(respond))
}

/// What wraps the handlers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Contender {
    Bare,
    Ours,
    AxumIdempotent,
    TowerHttpCache,
}

impl fmt::Display for Contender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Bare => "no layer",
            Self::Ours => "tower-idempotency",
            Self::AxumIdempotent => "axum-idempotent 0.6",
            Self::TowerHttpCache => "tower-http-cache 0.6",
        })
    }
}

/// Where requests go, and what they must carry.
#[derive(Clone)]
struct Target {
    addr: SocketAddr,
    /// The session cookie `axum-idempotent` needs, once established.
    cookie: Option<HeaderValue>,
}

/// A server on loopback; aborted when dropped.
struct Server {
    target: Target,
    calls: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start(args: &Args, contender: Contender, latency: Duration) -> Server {
    let calls = Arc::new(AtomicU64::new(0));
    let answer = answer_body();
    let app = match contender {
        Contender::Bare => handlers(answer, Arc::clone(&calls), latency),
        Contender::Ours => {
            let layer = if args.raw_body {
                IdempotencyLayer::builder().raw_body().build()
            } else {
                IdempotencyLayer::new()
            };
            handlers(answer, Arc::clone(&calls), latency).layer(layer)
        }
        Contender::AxumIdempotent => {
            peers::axum_idempotent(handlers(answer, Arc::clone(&calls), latency))
        }
        Contender::TowerHttpCache => peers::tower_http_cache(answer, Arc::clone(&calls), latency),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let cookie = match contender {
        Contender::AxumIdempotent => Some(peers::establish_session(&client(), addr).await),
        _ => None,
    };
    Server {
        target: Target { addr, cookie },
        calls,
        task,
    }
}

mod peers {
    //! The peers, configured as their READMEs show.

    use super::*;
    use axum_idempotent::{IdempotentLayer, IdempotentOptions};
    use ruts::{
        store::{moka::MokaStore, Ttl},
        CookieOptions, Session, SessionLayer,
    };
    use tower_cookies::CookieManagerLayer;
    use tower_http_cache::prelude::{CacheLayer, InMemoryBackend};

    /// `axum-idempotent` in its default hashing mode over an in-memory
    /// `ruts` session store, layered as its README says: cookies outermost,
    /// then sessions, then the idempotency layer. It caches only for a
    /// request that already has a session, so `/login` makes one.
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

    pub(super) async fn establish_session(client: &HttpClient, addr: SocketAddr) -> HeaderValue {
        let request = Request::post(format!("http://{addr}/login"))
            .body(Full::default())
            .unwrap();
        let response = client.request(request).await.unwrap();
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

    /// `tower-http-cache` with its in-memory (moka) backend, the README's
    /// quick-start configuration without the optional extras. Its service
    /// requires a `Sync` response body, which an axum handler's body is not,
    /// so it wraps the same handler logic as a `tower::service_fn`; its
    /// errors are `BoxError`, so `HandleErrorLayer` maps them for axum.
    /// It caches GET and HEAD, keyed by path and query.
    pub(super) fn tower_http_cache(
        answer: Bytes,
        calls: Arc<AtomicU64>,
        latency: Duration,
    ) -> Router {
        let cache = CacheLayer::builder(InMemoryBackend::new(10_000))
            .ttl(Duration::from_secs(3600))
            .build();
        let handler = tower::service_fn(move |_: axum::extract::Request| {
            let answer = answer.clone();
            let calls = Arc::clone(&calls);
            async move {
                calls.fetch_add(1, Ordering::Relaxed);
                if !latency.is_zero() {
                    tokio::time::sleep(latency).await;
                }
                Ok::<_, Infallible>(
                    http::Response::builder()
                        .header(header::CONTENT_TYPE, "application/json")
                        .body(Full::new(answer))
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

fn client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(connector)
}

/// How each request of a run is made.
#[derive(Clone, Copy, Debug)]
enum Shape {
    /// The same chat-completions POST every time.
    PostSame,
    /// A chat-completions POST whose body is unique to the request.
    PostUnique,
    /// The same GET every time (the peers' common ground).
    GetSame,
}

fn make_request(shape: Shape, target: &Target, n: u64) -> Request<Full<Bytes>> {
    let addr = target.addr;
    let mut request = match shape {
        Shape::PostSame | Shape::PostUnique => {
            let body = match shape {
                Shape::PostUnique => {
                    Bytes::from(PROMPT.replace("one sentence", &format!("one sentence, #{n}")))
                }
                _ => Bytes::from_static(PROMPT.as_bytes()),
            };
            Request::post(format!("http://{addr}/v1/chat/completions"))
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::AUTHORIZATION, "Bearer sk-bench-0123456789abcdef")
                .body(Full::new(body))
                .unwrap()
        }
        Shape::GetSame => Request::get(format!("http://{addr}/v1/answer?q=sneaker"))
            .body(Full::default())
            .unwrap(),
    };
    if let Some(cookie) = &target.cookie {
        request.headers_mut().insert(header::COOKIE, cookie.clone());
    }
    request
}

/// The outcome of one request: its status, replay markers and body length.
struct Reply {
    status: StatusCode,
    replayed: bool,
    len: usize,
}

async fn send(client: &HttpClient, request: Request<Full<Bytes>>) -> Result<Reply, BoxError> {
    let response = client.request(request).await?;
    let status = response.status();
    let headers = response.headers();
    let replayed = headers
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("; hit"))
        || headers.contains_key("idempotency-replayed");
    let len = response.into_body().collect().await?.to_bytes().len();
    Ok(Reply {
        status,
        replayed,
        len,
    })
}

/// What a throughput run measured.
struct Run {
    requests: u64,
    errors: u64,
    elapsed: Duration,
    /// Latency in microseconds.
    latency: Histogram<u64>,
    upstream_calls: u64,
    /// CPU time this process (servers and client) spent per request, in
    /// microseconds: unlike throughput, it does not move when other
    /// processes compete for the cores.
    cpu_us: f64,
}

impl Run {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn ms(&self, quantile: f64) -> f64 {
        self.latency.value_at_quantile(quantile) as f64 / 1000.0
    }
}

/// `concurrency` tasks send requests back to back until `duration` is over
/// or `max` requests were sent.
async fn load(args: &Args, server: &Server, shape: Shape, duration: Duration, first: u64) -> Run {
    let client = client();
    let issued = Arc::new(AtomicU64::new(first));
    let cap = first + args.max_requests;
    let calls_before = server.calls.load(Ordering::Relaxed);
    let cpu_before = cpu_time();
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let client = client.clone();
            let issued = Arc::clone(&issued);
            let target = server.target.clone();
            tokio::spawn(async move {
                let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
                let (mut ok, mut errors) = (0u64, 0u64);
                loop {
                    let n = issued.fetch_add(1, Ordering::Relaxed);
                    if n >= cap || Instant::now() >= deadline {
                        break;
                    }
                    let request = make_request(shape, &target, n);
                    let sent = Instant::now();
                    match send(&client, request).await {
                        Ok(reply) if reply.status == StatusCode::OK && reply.len > 0 => {
                            ok += 1;
                            let micros = sent.elapsed().as_micros() as u64;
                            latency.saturating_record(micros.max(1));
                        }
                        _ => errors += 1,
                    }
                }
                (ok, errors, latency)
            })
        })
        .collect();
    let mut run = Run {
        requests: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latency: Histogram::new_with_bounds(1, 60_000_000, 3).unwrap(),
        upstream_calls: 0,
        cpu_us: 0.0,
    };
    for task in tasks {
        let (ok, errors, latency) = task.await.unwrap();
        run.requests += ok;
        run.errors += errors;
        run.latency.add(latency).unwrap();
    }
    run.elapsed = started.elapsed();
    run.upstream_calls = server.calls.load(Ordering::Relaxed) - calls_before;
    if let (Some(before), Some(after)) = (cpu_before, cpu_time()) {
        run.cpu_us = (after - before).as_secs_f64() * 1e6 / run.requests.max(1) as f64;
    }
    run
}

/// User plus system CPU time of this process, from `/proc/self/stat` (in
/// clock ticks, 100 a second on Linux), or `None` elsewhere.
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the line.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

fn print_run(label: &str, run: &Run) {
    println!(
        "  {label:<44} {:>8.0} req/s  p50 {:>6.3} ms  p99 {:>6.3} ms  {:>5.1} µs CPU/req  ({} ok, {} errors, {} upstream calls)",
        run.rps(),
        run.ms(0.50),
        run.ms(0.99),
        run.cpu_us,
        run.requests,
        run.errors,
        run.upstream_calls,
    );
}

/// Warms a server (connections, caches), then measures it.
async fn measure(args: &Args, server: &Server, shape: Shape) -> Run {
    let warmup = Duration::from_secs_f64(args.warmup);
    if !warmup.is_zero() {
        load(args, server, shape, warmup, 0).await;
    }
    // Unique requests keep numbering past the warm-up's.
    load(
        args,
        server,
        shape,
        Duration::from_secs_f64(args.duration),
        1 << 40,
    )
    .await
}

/// Sends one request and checks whether it was replayed.
async fn probe(server: &Server, shape: Shape) -> bool {
    let reply = send(&client(), make_request(shape, &server.target, 0))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    reply.replayed
}

/// One contender of a throughput comparison.
struct Entry {
    label: &'static str,
    contender: Contender,
    latency: Duration,
    shape: Shape,
    /// Whether every measured request must be answered without the handler.
    all_hits: bool,
}

/// Runs every entry once per round, alternating, so that drift in the
/// machine's speed hits all of them alike; prints each run, then the median
/// throughput of each entry and the median of its per-round ratio to the
/// first entry.
async fn compare(args: &Args, entries: &[Entry]) {
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); entries.len()];
    let mut rps: Vec<Vec<f64>> = vec![Vec::new(); entries.len()];
    let mut p99: Vec<Vec<f64>> = vec![Vec::new(); entries.len()];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); entries.len()];
    for round in 1..=args.rounds {
        let mut baseline = None;
        for (i, entry) in entries.iter().enumerate() {
            let server = start(args, entry.contender, entry.latency).await;
            if entry.all_hits {
                // Store, then check that a repeat is answered from storage.
                probe(&server, entry.shape).await;
                probe(&server, entry.shape).await;
            }
            let run = measure(args, &server, entry.shape).await;
            print_run(&format!("round {round}: {}", entry.label), &run);
            if entry.all_hits {
                assert_eq!(run.upstream_calls, 0, "{}: all hits", entry.label);
            }
            let baseline = *baseline.get_or_insert(run.rps());
            ratios[i].push(run.rps() / baseline);
            rps[i].push(run.rps());
            p99[i].push(run.ms(0.99));
            cpu[i].push(run.cpu_us);
        }
    }
    println!("  median of {} rounds:", args.rounds);
    for (i, entry) in entries.iter().enumerate() {
        println!(
            "  {:<44} {:>8.0} req/s  p99 {:>6.3} ms  {:>5.1} µs CPU/req  throughput ratio to {}: {:.3} (per round: {})",
            entry.label,
            median(&mut rps[i]),
            median(&mut p99[i]),
            median(&mut cpu[i]),
            entries[0].label,
            median(&mut ratios[i].clone()),
            ratios[i]
                .iter()
                .map(|r| format!("{r:.3}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

async fn scenario_bare_hits_misses(args: &Args, which: Scenario) {
    let all = which == Scenario::All;
    if all || which == Scenario::Bare || which == Scenario::Hits {
        println!("(a)+(b) ~1 KiB JSON answer, identical chat-completions POSTs: no layer, then the layer warmed (all L1 hits)");
        let mut entries = vec![Entry {
            label: "(a) no layer",
            contender: Contender::Bare,
            latency: Duration::ZERO,
            shape: Shape::PostSame,
            all_hits: false,
        }];
        if which != Scenario::Bare {
            entries.push(Entry {
                label: "(b) tower-idempotency, hits",
                contender: Contender::Ours,
                latency: Duration::ZERO,
                shape: Shape::PostSame,
                all_hits: true,
            });
        }
        compare(args, &entries).await;
    }
    if all || which == Scenario::Misses {
        let latency = Duration::from_millis(args.latency_ms);
        println!(
            "(c) every request unique, handler sleeps {} ms",
            latency.as_millis()
        );
        compare(
            args,
            &[
                Entry {
                    label: "(c) no layer",
                    contender: Contender::Bare,
                    latency,
                    shape: Shape::PostUnique,
                    all_hits: false,
                },
                Entry {
                    label: "(c) tower-idempotency, misses",
                    contender: Contender::Ours,
                    latency,
                    shape: Shape::PostUnique,
                    all_hits: false,
                },
            ],
        )
        .await;
    }
}

const CONTENDERS: [Contender; 4] = [
    Contender::Bare,
    Contender::Ours,
    Contender::AxumIdempotent,
    Contender::TowerHttpCache,
];

async fn scenario_peers_coalesce(args: &Args) {
    let latency = Duration::from_millis(args.burst_latency_ms);
    println!(
        "(d) {} concurrent identical GETs, handler sleeps {} ms: handler calls per burst",
        args.burst,
        latency.as_millis()
    );
    for contender in CONTENDERS {
        let server = start(args, contender, latency).await;
        let client = client();
        let mut per_burst = Vec::new();
        for round in 0..args.burst_rounds {
            let before = server.calls.load(Ordering::SeqCst);
            let tasks: Vec<_> = (0..args.burst)
                .map(|_| {
                    let client = client.clone();
                    let mut request = make_request(Shape::GetSame, &server.target, 0);
                    // A query not seen before: nothing is cached yet.
                    *request.uri_mut() =
                        format!("http://{}/v1/answer?q=burst-{round}", server.target.addr)
                            .parse()
                            .unwrap();
                    tokio::spawn(async move { send(&client, request).await })
                })
                .collect();
            let mut ok = 0;
            for task in tasks {
                if let Ok(reply) = task.await.unwrap() {
                    ok += usize::from(reply.status == StatusCode::OK && reply.len > 0);
                }
            }
            assert_eq!(ok, args.burst, "{contender}: every request answered");
            per_burst.push(server.calls.load(Ordering::SeqCst) - before);
        }
        println!(
            "  {:<44} handler calls per burst: {per_burst:?}",
            contender.to_string()
        );
    }
}

async fn scenario_peers_hits(args: &Args) {
    println!("(e) hit throughput, identical GETs, warmed");
    let entry = |label, contender| Entry {
        label,
        contender,
        latency: Duration::ZERO,
        shape: Shape::GetSame,
        all_hits: contender != Contender::Bare,
    };
    compare(
        args,
        &[
            entry("(e) no layer", Contender::Bare),
            entry("(e) tower-idempotency", Contender::Ours),
            entry("(e) axum-idempotent 0.6", Contender::AxumIdempotent),
            entry("(e) tower-http-cache 0.6", Contender::TowerHttpCache),
        ],
    )
    .await;
}

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.workers)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "loadgen: {} workers, {} concurrent clients, {:.1} s per run (+{:.1} s warm-up)",
        args.workers, args.concurrency, args.duration, args.warmup
    );
    let load_average = || std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average before: {}", load_average().trim());
    runtime.block_on(async {
        let which = args.scenario;
        if matches!(
            which,
            Scenario::All | Scenario::Bare | Scenario::Hits | Scenario::Misses
        ) {
            scenario_bare_hits_misses(&args, which).await;
        }
        if matches!(which, Scenario::All | Scenario::PeersCoalesce) {
            scenario_peers_coalesce(&args).await;
        }
        if matches!(which, Scenario::All | Scenario::PeersHits) {
            scenario_peers_hits(&args).await;
        }
    });
    println!("load average after: {}", load_average().trim());
}
