//! An idempotency reverse proxy: put it in front of a paid API and repeats
//! stop costing money.
//!
//! Every request is forwarded to `--upstream` through `IdempotencyLayer`:
//! repeats are replayed from memory (and, with `--redis`, from a Redis that
//! every gateway instance shares), and of many concurrent identical requests
//! only one reaches the upstream, whichever instance they arrive at.
//! Responses are streamed back as they arrive, server-sent events included.
//!
//! ```text
//! cargo run --example gateway -- --upstream https://api.openai.com --redis redis://127.0.0.1:6379/
//! ```
//!
//! It prints `listening on ADDR` once it accepts connections (with
//! `--listen 127.0.0.1:0`, the port it was given), serves the layer's
//! counters at `GET /_idempotency/stats`, logs to stderr (filter with
//! `RUST_LOG`), and on SIGTERM or Ctrl-C stops accepting connections and lets
//! the requests in flight finish before it exits.

use std::{
    convert::Infallible,
    future::Future,
    io::{IsTerminal, Write},
    pin::Pin,
    process::ExitCode,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{
    body::Body,
    extract::{Request as AxumRequest, State},
    middleware::{self, Next},
    response::Response as AxumResponse,
    routing::get,
    Json, Router,
};
use bytes::Bytes;
use clap::Parser;
use http::{
    header::{self, HeaderName},
    uri::{Authority, PathAndQuery, Scheme},
    HeaderMap, HeaderValue, Request, Response, StatusCode, Uri, Version,
};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use serde_json::{json, Value};
use tower::{Service, ServiceBuilder};
use tower_idempotency::{BoxError, IdempotencyLayer, RedisStore, RequestBody};
use tracing_subscriber::EnvFilter;

/// Path of the gateway's own statistics endpoint; never forwarded.
const STATS_PATH: &str = "/_idempotency/stats";

/// How long, after the last connection closed, the gateway waits for upstream
/// calls whose callers went away (they complete, and are stored, because they
/// have been paid for).
const DRAIN_FLIGHTS: Duration = Duration::from_secs(10);

/// An idempotency reverse proxy: replays repeated requests and lets one of
/// many concurrent duplicates reach the upstream.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on; port 0 picks a free port (printed on stdout).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: String,

    /// The API to forward to: http:// or https://, optionally with a base
    /// path that is put in front of every request's path.
    #[arg(long, value_name = "URL", value_parser = parse_upstream)]
    upstream: UpstreamBase,

    /// A Redis shared by every gateway instance (redis://host:port/db).
    /// Without it (or --redis-cluster) each gateway caches in memory only.
    #[arg(long, value_name = "URL", conflicts_with = "redis_cluster")]
    redis: Option<String>,

    /// Nodes of a Redis Cluster to share instead of --redis.
    #[arg(long, value_name = "URL,URL,...", value_delimiter = ',', num_args = 1..)]
    redis_cluster: Option<Vec<String>>,

    /// Part of every key: change it (a model version) to start afresh.
    #[arg(long, value_name = "NAME", default_value = "")]
    namespace: String,

    /// How long a stored response is replayed, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 3600)]
    ttl: u64,

    /// Largest request body fingerprinted and largest response stored, in
    /// bytes. Larger requests pass through uncached; larger responses reach
    /// their callers in full but are not stored.
    #[arg(long, value_name = "BYTES", default_value_t = 16 * 1024 * 1024)]
    max_body: usize,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("gateway: {}", chain(&*error));
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), BoxError> {
    let mut builder = IdempotencyLayer::builder()
        .namespace(args.namespace.clone())
        .ttl(Duration::from_secs(args.ttl))
        .max_request_body(args.max_body)
        .max_response_body(args.max_body)
        // Callers steer the cache per request with `x-idempotency-*`
        // headers, which never reach the upstream.
        .control_headers(true);
    if let Some(url) = &args.redis {
        let store = RedisStore::builder(url.as_str())
            .connect()
            .await
            .map_err(|error| format!("cannot connect to redis at {url}: {error}"))?;
        builder = builder.redis(store);
        tracing::info!(%url, "sharing entries through redis");
    } else if let Some(urls) = &args.redis_cluster {
        let store = RedisStore::cluster_builder(urls.iter().cloned())
            .connect()
            .await
            .map_err(|error| format!("cannot connect to the redis cluster: {error}"))?;
        builder = builder.redis(store);
        tracing::info!(nodes = ?urls, "sharing entries through a redis cluster");
    } else {
        tracing::info!("no --redis: entries are cached in this process only");
    }
    let layer = builder.build();

    let upstream = args.upstream.to_string();
    let proxy = Proxy::new(args.upstream)?;
    let app = Router::new()
        .route(STATS_PATH, get(stats))
        .with_state(layer.clone())
        .fallback_service(ServiceBuilder::new().layer(layer.clone()).service(proxy))
        .layer(middleware::from_fn(log_request));

    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|error| format!("cannot listen on {}: {error}", args.listen))?;
    let address = listener.local_addr()?;
    let shutdown = shutdown_signal()?;
    tracing::info!(%address, %upstream, "gateway ready");
    // The one line a supervisor (or a test) waits for.
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {address}")?;
    stdout.flush()?;
    drop(stdout);

    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;

    // Every connection is closed. Upstream calls whose callers went away run
    // in tasks of their own; give them a moment to finish and be stored.
    let deadline = Instant::now() + DRAIN_FLIGHTS;
    while layer.in_flight() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Installs the SIGTERM and Ctrl-C handlers now, so that a signal arriving
/// right after start-up is not lost; the future resolves on the first.
fn shutdown_signal() -> std::io::Result<Pin<Box<dyn Future<Output = ()> + Send>>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        Ok(Box::pin(async move {
            tokio::select! {
                _ = terminate.recv() => tracing::info!("SIGTERM: finishing the requests in flight"),
                _ = interrupt.recv() => tracing::info!("ctrl-c: finishing the requests in flight"),
            }
        }))
    }
    #[cfg(not(unix))]
    {
        Ok(Box::pin(async {
            match tokio::signal::ctrl_c().await {
                Ok(()) => tracing::info!("ctrl-c: finishing the requests in flight"),
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for ctrl-c");
                    std::future::pending::<()>().await;
                }
            }
        }))
    }
}

/// `GET /_idempotency/stats`: this process's counters and, with Redis, the
/// fleet's.
async fn stats(State(layer): State<IdempotencyLayer>) -> Json<Value> {
    let fleet = match layer.fleet_stats().await {
        Some(Ok(fleet)) => json!(fleet),
        Some(Err(error)) => {
            tracing::warn!(%error, "cannot read the fleet statistics from redis");
            Value::Null
        }
        None => Value::Null,
    };
    Json(json!({ "process": layer.stats(), "fleet": fleet }))
}

/// Logs one line per request: what, the outcome, and how long the head took.
async fn log_request(request: AxumRequest, next: Next) -> AxumResponse {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let cache_status = response
        .headers()
        .get(tower_idempotency::CACHE_STATUS)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("-");
    tracing::info!(
        %method,
        %path,
        status = response.status().as_u16(),
        cache_status,
        elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    response
}

/// The upstream's scheme, authority and base path.
#[derive(Debug, Clone)]
struct UpstreamBase {
    scheme: Scheme,
    authority: Authority,
    /// Without a trailing slash: empty, or `/prefix`.
    path: String,
}

impl std::fmt::Display for UpstreamBase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.path)
    }
}

fn parse_upstream(text: &str) -> Result<UpstreamBase, String> {
    let uri: Uri = text
        .parse()
        .map_err(|error| format!("not a URL: {error}"))?;
    let scheme = match uri.scheme() {
        Some(scheme) if *scheme == Scheme::HTTP || *scheme == Scheme::HTTPS => scheme.clone(),
        _ => return Err("the upstream must be an http:// or https:// URL".into()),
    };
    let authority = uri
        .authority()
        .cloned()
        .ok_or("the upstream URL has no host")?;
    if uri.query().is_some() {
        return Err("the upstream URL cannot have a query".into());
    }
    Ok(UpstreamBase {
        scheme,
        authority,
        path: uri.path().trim_end_matches('/').to_owned(),
    })
}

type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;
type UpstreamClient = Client<HttpsConnector<HttpConnector>, RequestBody<Body>>;

/// The inner service: forwards a request to the upstream and streams its
/// response back. Failures to reach the upstream are answered 502.
#[derive(Clone)]
struct Proxy {
    client: UpstreamClient,
    upstream: Arc<UpstreamBase>,
    host: HeaderValue,
}

impl Proxy {
    fn new(upstream: UpstreamBase) -> Result<Self, BoxError> {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())?
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .build();
        let client = Client::builder(TokioExecutor::new()).build(connector);
        let host = HeaderValue::from_str(upstream.authority.as_str())?;
        Ok(Self {
            client,
            upstream: Arc::new(upstream),
            host,
        })
    }

    /// The upstream URL of a request's path and query.
    fn target(&self, uri: &Uri) -> Result<Uri, http::Error> {
        let path_and_query = uri
            .path_and_query()
            .map_or("/", PathAndQuery::as_str)
            .to_owned();
        Uri::builder()
            .scheme(self.upstream.scheme.clone())
            .authority(self.upstream.authority.clone())
            .path_and_query(format!("{}{path_and_query}", self.upstream.path))
            .build()
    }
}

impl Service<Request<RequestBody<Body>>> for Proxy {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The pooled client queues requests itself.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<RequestBody<Body>>) -> Self::Future {
        let (mut parts, body) = request.into_parts();
        let target = match self.target(&parts.uri) {
            Ok(target) => target,
            Err(error) => {
                tracing::warn!(uri = %parts.uri, %error, "cannot build the upstream URL");
                let response = plain(StatusCode::BAD_REQUEST, "cannot forward this URL\n");
                return Box::pin(async move { Ok(response) });
            }
        };
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.insert(header::HOST, self.host.clone());
        parts.uri = target;
        // The client speaks whatever it negotiated with the upstream.
        parts.version = Version::HTTP_11;
        let client = self.client.clone();
        Box::pin(async move {
            let method = parts.method.clone();
            let uri = parts.uri.clone();
            match client.request(Request::from_parts(parts, body)).await {
                Ok(response) => {
                    let (mut parts, body) = response.into_parts();
                    strip_hop_by_hop(&mut parts.headers);
                    // Streamed frame by frame: nothing is buffered here.
                    let body = body.map_err(BoxError::from).boxed_unsync();
                    Ok(Response::from_parts(parts, body))
                }
                Err(error) => {
                    tracing::warn!(%method, %uri, error = %chain(&error), "upstream call failed");
                    Ok(plain(
                        StatusCode::BAD_GATEWAY,
                        "the upstream could not be reached\n",
                    ))
                }
            }
        })
    }
}

/// A short text response.
fn plain(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
    let mut response = Response::new(
        Full::new(Bytes::from_static(text.as_bytes()))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Removes the headers that describe one connection, not the message
/// (RFC 9110, section 7.6.1): those named in `Connection` and the usual ones.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
}

/// An error and its sources, on one line.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
