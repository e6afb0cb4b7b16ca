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
//! `--listen 127.0.0.1:0`, the port it was given), serves a savings
//! dashboard at `GET /_idempotency/`, the layer's counters at
//! `GET /_idempotency/stats`, Prometheus metrics at
//! `GET /_idempotency/metrics` and a health check at
//! `GET /_idempotency/health` (see [`admin`]), logs to stderr (filter with
//! `RUST_LOG`), and on SIGTERM or Ctrl-C stops accepting connections and lets
//! the requests in flight finish before it exits.
//!
//! Its unit tests (flag values, the body timeout) run with
//! `cargo test --all-features --example gateway`; `tests/gateway/` runs the
//! binary.
//!
//! Every connection and upstream call is bounded in time, and the number of
//! connections by memory and file descriptors: see `--help` and the
//! README's "Run it as a proxy".

mod admin;
mod args;
mod history;
mod proxy;
mod server;
mod timeout;

use std::{
    future::Future,
    io::{IsTerminal, Write},
    pin::Pin,
    process::ExitCode,
    time::{Duration, Instant},
};

use axum::{
    extract::Request as AxumRequest,
    middleware::{self, Next},
    response::Response as AxumResponse,
};
use http::Request;
use tower::ServiceBuilder;
use tower_idempotency::{strip_hop_by_hop, BoxError, Builder, IdempotencyLayer, RedisStore};
use tracing_subscriber::EnvFilter;

use crate::{
    admin::{Admin, StoreKind},
    args::Args,
    proxy::{strip_control_headers, Proxy},
    server::Limits,
};

/// Path of the gateway's statistics endpoint; never forwarded (nor is
/// anything else under `/_idempotency/`, see [`admin`]).
const STATS_PATH: &str = "/_idempotency/stats";

/// Connections the `--admin-listen` address serves at once.
const ADMIN_CONNECTIONS: usize = 64;

/// The largest `--tenant-secret-file` read: a secret, not a data file.
const MAX_TENANT_SECRET: u64 = 64 * 1024;

/// How long, after the last connection closed, the gateway waits for upstream
/// calls whose callers went away (they complete, and are stored, because they
/// have been paid for).
const DRAIN_FLIGHTS: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let args = args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("gateway: {}", chain(&*error));
            ExitCode::FAILURE
        }
    }
}

/// Adds the `--sqlite` store to the layer, if one was asked for and it
/// opens; returns its path if it did.
#[cfg(feature = "sqlite")]
fn with_sqlite(args: &Args, builder: Builder) -> (Builder, Option<std::path::PathBuf>) {
    let Some(path) = args.sqlite.as_ref() else {
        return (builder, None);
    };
    match tower_idempotency::SqliteStore::open(path) {
        Ok(store) => {
            tracing::info!(path = %path.display(), "keeping entries in a sqlite file");
            (builder.sqlite(store), Some(path.clone()))
        }
        Err(error) => {
            tracing::error!(error = %chain(&error), "cannot use the sqlite file");
            (builder, None)
        }
    }
}

#[cfg(not(feature = "sqlite"))]
fn with_sqlite(_: &Args, builder: Builder) -> (Builder, Option<std::path::PathBuf>) {
    (builder, None)
}

async fn run(args: Args) -> Result<(), BoxError> {
    // A duplicate waits as long as the call it waits for may take to answer.
    let wait_timeout = args.wait_timeout.unwrap_or(args.upstream_timeout);
    if args.ttl > args.max_ttl {
        return Err(format!(
            "--ttl ({} s) is above --max-ttl ({} s)",
            args.ttl.as_secs(),
            args.max_ttl.as_secs()
        )
        .into());
    }
    let mut store_kind = StoreKind::Memory;
    let mut builder = IdempotencyLayer::builder()
        .namespace(args.namespace.clone())
        // Every request goes to the one upstream: the name a client used
        // to reach this gateway is not part of what is sent.
        .key_authority(false)
        .ttl(args.ttl)
        .max_ttl(args.max_ttl)
        .max_request_body(args.max_body)
        .max_response_body(args.max_body)
        .l1_capacity(args.l1_capacity)
        .wait_timeout(wait_timeout)
        // The proxy answers 504 and ends a silent body itself; the layer's
        // own bounds match, so a leader is let go at the same moment.
        .upstream_timeout(args.upstream_timeout)
        .idle_timeout(args.idle_timeout)
        .control_headers(args.control_headers);
    for name in &args.vary_headers {
        builder = builder.vary_header(name.clone());
    }
    if let args::Sampling::Policy(policy) = args.sampling {
        builder = builder.sampling_policy(policy);
    }
    if args.tenants > 0 {
        builder = builder.count_tenants(args.tenants as usize);
        if let Some(path) = &args.tenant_secret_file {
            builder = builder.tenant_secret(read_tenant_secret(path)?);
        }
    }
    if let Some(prices) = args.price_table() {
        builder = builder.prices(prices);
    }
    if let Some(url) = &args.redis {
        let store = RedisStore::builder(url.as_str())
            .connect()
            .await
            .map_err(|error| format!("cannot connect to redis at {url}: {error}"))?;
        builder = builder.redis(store);
        tracing::info!(%url, "sharing entries through redis");
        store_kind = StoreKind::Redis;
    } else if let Some(urls) = &args.redis_cluster {
        let store = RedisStore::cluster_builder(urls.iter().cloned())
            .connect()
            .await
            .map_err(|error| format!("cannot connect to the redis cluster: {error}"))?;
        builder = builder.redis(store);
        tracing::info!(nodes = ?urls, "sharing entries through a redis cluster");
        store_kind = StoreKind::RedisCluster;
    } else {
        let kept;
        (builder, kept) = with_sqlite(&args, builder);
        match kept {
            Some(path) => store_kind = StoreKind::Sqlite(path),
            None => {
                tracing::info!("no --redis nor --sqlite: entries are cached in this process only")
            }
        }
    }
    let layer = builder.build();
    // Before any request: the metrics recorder sees everything.
    let admin = Admin::new(
        layer.clone(),
        store_kind,
        args.history_interval,
        args.history_slots,
        args.admin_hosts.clone(),
    );
    admin.spawn_sampler();

    let upstream = args.upstream.to_string();
    let proxy = Proxy::new(args.upstream, args.upstream_timeout, args.idle_timeout)?;
    let control_headers = args.control_headers;
    let forward = ServiceBuilder::new()
        // Keyed as forwarded: what the upstream will not see (hop-by-hop
        // headers, and those `Connection` names) is not in the key either.
        .map_request(move |mut request: Request<axum::body::Body>| {
            strip_hop_by_hop(request.headers_mut());
            if !control_headers {
                strip_control_headers(request.headers_mut());
            }
            request
        })
        .layer(layer.clone())
        .service(proxy);
    // The gateway's own endpoints: beside the proxy, or on an address of
    // their own.
    let (app, admin_app) = match &args.admin_listen {
        None => (admin.router().fallback_service(forward), None),
        Some(_) => (
            Admin::elsewhere().fallback_service(forward),
            Some(admin.router().layer(middleware::from_fn(log_request))),
        ),
    };
    let app = app.layer(middleware::from_fn(log_request));

    let limits = Limits {
        header_timeout: args.header_timeout,
        body_timeout: args.body_timeout,
        keepalive_timeout: args.keepalive_timeout,
        max_connections: args.max_connections,
    };
    let (max_connections, fd_limit) = server::connection_budget(limits.max_connections);
    if max_connections < limits.max_connections {
        tracing::warn!(
            requested = limits.max_connections,
            max_connections,
            fd_limit,
            "the file-descriptor limit allows fewer connections than --max-connections"
        );
    }

    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|error| format!("cannot listen on {}: {error}", args.listen))?;
    let address = listener.local_addr()?;
    let admin_listener = match &args.admin_listen {
        Some(admin_address) => Some(
            tokio::net::TcpListener::bind(admin_address)
                .await
                .map_err(|error| format!("cannot listen on {admin_address}: {error}"))?,
        ),
        None => None,
    };
    let shutdown = shutdown_signal()?;
    tracing::info!(%address, %upstream, max_connections, "gateway ready");
    // The one line a supervisor (or a test) waits for comes first.
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {address}")?;
    if let Some(admin_listener) = &admin_listener {
        writeln!(
            stdout,
            "admin listening on {}",
            admin_listener.local_addr()?
        )?;
    }
    stdout.flush()?;
    drop(stdout);

    match (admin_listener, admin_app) {
        (Some(admin_listener), Some(admin_app)) => {
            // One signal stops both listeners.
            let (stop, stopping) = tokio::sync::watch::channel(false);
            let stopped = |mut stopping: tokio::sync::watch::Receiver<bool>| async move {
                let _ = stopping.wait_for(|stop| *stop).await;
            };
            let admin_limits = Limits {
                max_connections: ADMIN_CONNECTIONS,
                ..limits
            };
            tokio::join!(
                async {
                    shutdown.await;
                    let _ = stop.send(true);
                },
                server::serve(
                    listener,
                    app,
                    limits,
                    max_connections,
                    stopped(stopping.clone())
                ),
                server::serve(
                    admin_listener,
                    admin_app,
                    admin_limits,
                    ADMIN_CONNECTIONS,
                    stopped(stopping),
                ),
            );
        }
        _ => server::serve(listener, app, limits, max_connections, shutdown).await,
    }

    // Every connection is closed. Upstream calls whose callers went away run
    // in tasks of their own; give them a moment to finish and be stored.
    let deadline = Instant::now() + DRAIN_FLIGHTS;
    while layer.in_flight() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// The content of `--tenant-secret-file`: not empty, and read only up to
/// [`MAX_TENANT_SECRET`] bytes, so that a device or a huge file given by
/// mistake (`/dev/zero`) is refused rather than read until memory runs out.
fn read_tenant_secret(path: &std::path::Path) -> Result<Vec<u8>, String> {
    use std::io::Read;

    let cannot = |error: std::io::Error| {
        format!(
            "cannot read --tenant-secret-file {}: {error}",
            path.display()
        )
    };
    let file = std::fs::File::open(path).map_err(cannot)?;
    let mut secret = Vec::new();
    file.take(MAX_TENANT_SECRET + 1)
        .read_to_end(&mut secret)
        .map_err(cannot)?;
    if secret.is_empty() {
        return Err(format!("--tenant-secret-file {} is empty", path.display()));
    }
    if secret.len() as u64 > MAX_TENANT_SECRET {
        return Err(format!(
            "--tenant-secret-file {} is larger than {MAX_TENANT_SECRET} bytes",
            path.display()
        ));
    }
    Ok(secret)
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

/// An error and its sources, on one line.
pub(crate) fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
