//! The gateway's own endpoints under `/_idempotency/`, never forwarded:
//!
//! - `/_idempotency/`: the savings dashboard, one self-contained page
//!   (`dashboard.html`, no external scripts, fonts or styles) that refreshes
//!   itself from the stats;
//! - `/_idempotency/stats`: JSON, this process's counters and, with Redis,
//!   the fleet's, the chart's `history` ring and the most replayed entries;
//! - `/_idempotency/metrics`: the layer's `metrics` facade in Prometheus
//!   text (built with the `metrics` feature);
//! - `/_idempotency/health`: 200 while the gateway serves, with whether the
//!   shared store answers and its circuit breaker's state.
//!
//! They answer only a `Host` that is an IP address, `localhost` or a name
//! given with `--admin-host`; any other gets 421. A web page that points a
//! DNS name of its own at the gateway's address (DNS rebinding) is then
//! same-origin with nothing the gateway serves here, and cannot read the
//! stats.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    sync::{
        atomic::{AtomicBool, Ordering::AcqRel, Ordering::Release},
        Arc, Mutex, OnceLock, PoisonError,
    },
    time::{Duration, Instant},
};

use axum::{
    extract::{Request, State},
    http::{header, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{any, get},
    Json, Router,
};
use serde_json::{json, Value};
use tokio::{sync::watch, time::MissedTickBehavior};
use tower_idempotency::IdempotencyLayer;

use crate::history::{now_millis, History};

/// The dashboard, embedded in the binary.
const DASHBOARD: &str = include_str!("dashboard.html");
/// How many entries the dashboard's "most replayed" table shows.
const TOP_ENTRIES: usize = 10;
/// The most replayed entries are looked up at most this often: with Redis
/// it is a scan of the namespace's keys.
const TOP_EVERY: Duration = Duration::from_secs(5);
/// A look-up that took this long is not started again before this many
/// times as long has passed: a namespace of many entries costs the shared
/// store a bounded share of its time, however often the stats are asked.
const TOP_PAUSE_FACTOR: u32 = 10;
/// How long a stats request waits for a look-up in progress before it
/// answers with the previous list (`null` if there was none yet).
const TOP_WAIT: Duration = Duration::from_secs(1);

/// How often the Prometheus recorder's upkeep runs (its own exporter's
/// default).
#[cfg(feature = "metrics")]
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The last "most replayed" list: when it was read, how long reading it
/// took, and the list.
type TopRead = Option<(Instant, Duration, Value)>;

/// Which shared store the layer uses, for the health answer and the page.
#[derive(Debug, Clone)]
pub enum StoreKind {
    Memory,
    Redis,
    RedisCluster,
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    Sqlite(std::path::PathBuf),
}

impl StoreKind {
    fn name(&self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Redis => "redis",
            Self::RedisCluster => "redis-cluster",
            Self::Sqlite(_) => "sqlite",
        }
    }

    fn is_redis(&self) -> bool {
        matches!(self, Self::Redis | Self::RedisCluster)
    }
}

/// What the endpoints share.
pub struct Admin {
    layer: IdempotencyLayer,
    store: StoreKind,
    history: Mutex<History>,
    interval: Duration,
    started: Instant,
    /// The last "most replayed" list. It is read by a task of its own, one
    /// at a time, so that no request waits on a long scan of the store.
    top: watch::Sender<TopRead>,
    /// Whether that task is running.
    top_reading: AtomicBool,
    #[cfg(feature = "metrics")]
    prometheus: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// The host names (`--admin-host`, lower case) answered besides IP
    /// addresses and `localhost`.
    hosts: Vec<String>,
}

impl Admin {
    /// Installs the Prometheus recorder (once per process; a second
    /// recorder is refused and logged), and starts the history ring.
    pub fn new(
        layer: IdempotencyLayer,
        store: StoreKind,
        interval: Duration,
        slots: usize,
        hosts: Vec<String>,
    ) -> Arc<Self> {
        let history = History::new(slots, &layer.stats());
        tracing::debug!(
            slots,
            bytes = history.memory_bound(),
            "history ring allocated"
        );
        Arc::new(Self {
            history: Mutex::new(history),
            layer,
            store,
            interval,
            started: Instant::now(),
            top: watch::Sender::new(None),
            top_reading: AtomicBool::new(false),
            #[cfg(feature = "metrics")]
            prometheus: install_prometheus(),
            hosts,
        })
    }

    /// Samples the layer's counters into the ring once per interval, for as
    /// long as the `Admin` lives.
    pub fn spawn_sampler(self: &Arc<Self>) {
        let admin = Arc::downgrade(self);
        let interval = self.interval;
        tokio::spawn(async move {
            let mut ticks =
                tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(admin) = admin.upgrade() else { return };
                let stats = admin.layer.stats();
                admin
                    .history
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .record(now_millis(), &stats);
            }
        });
        #[cfg(feature = "metrics")]
        self.spawn_upkeep();
    }

    /// Drains the Prometheus recorder's histogram samples into their
    /// summaries every [`UPKEEP_EVERY`], whether or not anyone scrapes:
    /// until then each upstream call's duration is kept as a sample, so
    /// upkeep tied to `--history-interval` (up to a day) let them pile up.
    #[cfg(feature = "metrics")]
    fn spawn_upkeep(self: &Arc<Self>) {
        if self.prometheus.is_none() {
            return;
        }
        let admin = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(UPKEEP_EVERY);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(admin) = admin.upgrade() else { return };
                if let Some(prometheus) = &admin.prometheus {
                    prometheus.run_upkeep();
                }
            }
        });
    }

    /// The routes answered where the endpoints are not served (the proxy's
    /// listener, with `--admin-listen`): 404 under `/_idempotency/`, which
    /// stays the gateway's own namespace and is never forwarded.
    pub fn elsewhere() -> Router {
        Router::new()
            .route("/_idempotency", any(served_elsewhere))
            .route("/_idempotency/", any(served_elsewhere))
            .route("/_idempotency/{*rest}", any(served_elsewhere))
    }

    /// The routes, with this state.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/_idempotency", get(dashboard))
            .route("/_idempotency/", get(dashboard))
            .route(crate::STATS_PATH, get(stats))
            .route("/_idempotency/metrics", get(metrics))
            .route("/_idempotency/health", get(health))
            // The gateway's own namespace: nothing under it is forwarded.
            .route("/_idempotency/{*rest}", get(not_found).fallback(not_found))
            .route_layer(middleware::from_fn_with_state(
                Arc::clone(&self),
                refuse_other_hosts,
            ))
            .with_state(self)
    }

    /// Whether the endpoints answer to `host`.
    fn answers_host(&self, host: &str) -> bool {
        host_allowed(host, &self.hosts)
    }

    /// The most replayed entries of the shared store; `null` when the store
    /// keeps no such counts. A list older than [`TOP_EVERY`] (or, after a
    /// slow read, [`TOP_PAUSE_FACTOR`] times that read) is read again in a
    /// task of its own, which this request awaits for at most [`TOP_WAIT`]:
    /// past it, the previous list is the answer.
    async fn top_entries(self: &Arc<Self>) -> Value {
        let mut read = self.top.subscribe();
        let stale = match &*read.borrow_and_update() {
            Some((at, took, _)) => at.elapsed() >= TOP_EVERY.max(*took * TOP_PAUSE_FACTOR),
            None => true,
        };
        if stale {
            if !self.top_reading.swap(true, AcqRel) {
                let admin = Arc::clone(self);
                tokio::spawn(async move {
                    let started = Instant::now();
                    let top = admin.read_top().await;
                    admin
                        .top
                        .send_replace(Some((Instant::now(), started.elapsed(), top)));
                    admin.top_reading.store(false, Release);
                });
            }
            let _ = tokio::time::timeout(TOP_WAIT, read.changed()).await;
        }
        let top = read.borrow();
        top.as_ref().map_or(Value::Null, |(_, _, top)| top.clone())
    }

    async fn read_top(&self) -> Value {
        match &self.store {
            StoreKind::Redis | StoreKind::RedisCluster => self.redis_top().await,
            #[cfg(feature = "sqlite")]
            StoreKind::Sqlite(path) => sqlite_top(path.clone()).await,
            _ => Value::Null,
        }
    }

    async fn redis_top(&self) -> Value {
        match self.layer.top_entries(TOP_ENTRIES).await {
            Some(Ok(entries)) => entries
                .iter()
                .filter(|entry| entry.stats.hits > 0)
                .map(|entry| {
                    json!({
                        "key": entry.key.to_string(),
                        "hits": entry.stats.hits,
                        "last_hit_at": entry.stats.last_hit_at,
                        "created_at": entry.stats.created_at,
                        "model": entry.model,
                        "tokens": entry.usage.as_ref().map(|usage| usage.total()),
                    })
                })
                .collect(),
            Some(Err(error)) => {
                tracing::warn!(%error, "cannot read the most replayed entries from redis");
                Value::Null
            }
            None => Value::Null,
        }
    }
}

/// Whether `host` (a `Host` header's value: a name or an address, and maybe
/// a port) is an IP address, `localhost` or one of `names`.
fn host_allowed(host: &str, names: &[String]) -> bool {
    let name = match host.strip_prefix('[') {
        // An IPv6 address, with or without a port.
        Some(rest) => {
            return rest.split_once(']').is_some_and(|(address, port)| {
                address.parse::<Ipv6Addr>().is_ok() && is_port_suffix(port)
            })
        }
        None => match host.split_once(':') {
            Some((name, _)) if is_port_suffix(&host[name.len()..]) => name,
            Some(_) => return false,
            None => host,
        },
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    name.parse::<Ipv4Addr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || names
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(name))
}

/// `""` or `:` and 1 to 5 digits.
fn is_port_suffix(text: &str) -> bool {
    text.is_empty()
        || text.strip_prefix(':').is_some_and(|digits| {
            (1..=5).contains(&digits.len()) && digits.bytes().all(|byte| byte.is_ascii_digit())
        })
}

/// Answers 421 to a request whose `Host` (or, without one, its URI's
/// authority, as HTTP/2 sends it) the endpoints do not answer to. A
/// request with neither (HTTP/1.0) comes from no browser and is served.
async fn refuse_other_hosts(
    State(admin): State<Arc<Admin>>,
    request: Request,
    next: Next,
) -> Response {
    let allowed = match request.headers().get(header::HOST) {
        Some(host) => host.to_str().is_ok_and(|host| admin.answers_host(host)),
        None => request
            .uri()
            .authority()
            .is_none_or(|authority| admin.answers_host(authority.as_str())),
    };
    if allowed {
        return next.run(request).await;
    }
    (
        StatusCode::MISDIRECTED_REQUEST,
        [(header::CACHE_CONTROL, "no-store")],
        "the gateway's own endpoints answer only an IP address, localhost or a name given with --admin-host\n",
    )
        .into_response()
}

#[cfg(feature = "metrics")]
fn install_prometheus() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    match metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder() {
        Ok(handle) => Some(handle),
        Err(error) => {
            tracing::warn!(%error, "cannot install the prometheus recorder");
            None
        }
    }
}

/// The seed's ROI query on the SQLite file, per entry: the rows replayed
/// most, read on a connection of its own (read-only, off the runtime).
#[cfg(feature = "sqlite")]
async fn sqlite_top(path: std::path::PathBuf) -> Value {
    let read = move || -> rusqlite::Result<Value> {
        let conn = rusqlite::Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_millis(200))?;
        let mut query = conn.prepare(
            "SELECT content_hash, hit_count, last_hit_at, created_at, model, tokens
             FROM ai_result_cache WHERE hit_count > 0 AND expires_at > ?1
             ORDER BY hit_count DESC LIMIT ?2",
        )?;
        let now = i64::try_from(now_millis()).unwrap_or(i64::MAX);
        let limit = i64::try_from(TOP_ENTRIES).unwrap_or(i64::MAX);
        let rows = query.query_map(rusqlite::params![now, limit], |row| {
            Ok(json!({
                "key": row.get::<_, String>(0)?,
                "hits": row.get::<_, i64>(1)?,
                "last_hit_at": row.get::<_, Option<i64>>(2)?,
                "created_at": row.get::<_, i64>(3)?,
                "model": row.get::<_, Option<String>>(4)?,
                "tokens": row.get::<_, Option<i64>>(5)?,
            }))
        })?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map(Value::from)
    };
    match tokio::task::spawn_blocking(read).await {
        Ok(Ok(top)) => top,
        Ok(Err(error)) => {
            tracing::warn!(%error, "cannot read the most replayed entries from sqlite");
            Value::Null
        }
        Err(_) => Value::Null,
    }
}

/// `GET /_idempotency/`: the dashboard, under a content security policy
/// that lets only its own inline script run (by its hash), only fetch from
/// this origin, and not be framed: a value it renders (a model name from an
/// upstream's answer, say) is text, never markup, and the policy keeps it
/// so should the page ever change.
async fn dashboard() -> Response {
    static POLICY: OnceLock<String> = OnceLock::new();
    let policy = POLICY.get_or_init(|| content_security_policy(DASHBOARD));
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CONTENT_SECURITY_POLICY, policy.as_str()),
        ],
        DASHBOARD,
    )
        .into_response()
}

/// The policy for `page`: its one inline `<script>` allowed by hash.
fn content_security_policy(page: &str) -> String {
    use sha2::{Digest, Sha256};

    let script = page
        .split_once("<script>")
        .and_then(|(_, rest)| rest.split_once("</script>"))
        .map_or("", |(script, _)| script);
    format!(
        "default-src 'none'; script-src 'sha256-{}'; style-src 'unsafe-inline'; \
         img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'",
        base64(&Sha256::digest(script.as_bytes()))
    )
}

/// Standard base64, with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `GET /_idempotency/stats`: this process's counters, with Redis the
/// fleet's, what the in-process cache holds, the chart's history and the
/// most replayed entries.
async fn stats(State(admin): State<Arc<Admin>>) -> Json<Value> {
    let layer = &admin.layer;
    let mut fleet_tenants = Vec::new();
    let fleet = match layer.fleet_stats().await {
        Some(Ok(fleet)) => {
            fleet_tenants = fleet.tenants.clone();
            json!(fleet)
        }
        Some(Err(error)) => {
            tracing::warn!(%error, "cannot read the fleet statistics from redis");
            Value::Null
        }
        None => Value::Null,
    };
    let stats = layer.stats();
    // The dashboard's tenants: the fleet's when Redis has them, else this
    // process's.
    let tenants = if fleet_tenants.is_empty() {
        stats.tenants.clone()
    } else {
        fleet_tenants
    };
    let (entries, weighed) = layer.l1_usage().await;
    let history = admin
        .history
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .slots();
    Json(json!({
        "process": &stats,
        "fleet": fleet,
        "l1": { "entries": entries, "weighed_bytes": weighed },
        "store": admin.store.name(),
        "history": history,
        "history_interval_ms": u64::try_from(admin.interval.as_millis()).unwrap_or(u64::MAX),
        "top_entries": admin.top_entries().await,
        "tenants": tenants,
    }))
}

/// `GET /_idempotency/metrics`: Prometheus text exposition.
async fn metrics(State(admin): State<Arc<Admin>>) -> Response {
    #[cfg(feature = "metrics")]
    if let Some(prometheus) = &admin.prometheus {
        return (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            prometheus.render(),
        )
            .into_response();
    }
    let _ = admin;
    (
        StatusCode::NOT_FOUND,
        "metrics: the gateway was built without the `metrics` feature\n",
    )
        .into_response()
}

/// `GET /_idempotency/health`: always 200 while the gateway serves; says
/// whether the shared store answers a probe right now and whether its
/// circuit breaker is open (the probe was skipped without being sent).
async fn health(State(admin): State<Arc<Admin>>) -> Json<Value> {
    let layer = &admin.layer;
    let redis = if admin.store.is_redis() {
        let skipped_before = layer.stats().store.skipped;
        // One PING, not the fleet's totals: a probe asks nothing of the
        // other gateways.
        let probe = layer.ping_redis().await;
        let (reachable, round_trip_ms, error) = match probe {
            Some(Ok(took)) => (true, Some(took.as_secs_f64() * 1e3), None),
            Some(Err(error)) => (false, None, Some(error.to_string())),
            None => (false, None, None),
        };
        // A probe that reached Redis closed the breaker, whatever other
        // requests were skipped while it ran.
        let skipped = !reachable && layer.stats().store.skipped > skipped_before;
        json!({
            "reachable": reachable,
            "breaker": if skipped { "open" } else { "closed" },
            "round_trip_ms": round_trip_ms,
            "error": error,
        })
    } else {
        Value::Null
    };
    let stats = layer.stats();
    Json(json!({
        "status": "serving",
        "uptime_seconds": admin.started.elapsed().as_secs(),
        "store": admin.store.name(),
        "redis": redis,
        "store_health": stats.store,
        "in_flight": layer.in_flight(),
    }))
}

async fn served_elsewhere() -> impl IntoResponse {
    (
        StatusCode::NOT_FOUND,
        "the gateway's endpoints are served on its admin address\n",
    )
}

async fn not_found() -> impl IntoResponse {
    (StatusCode::NOT_FOUND, "no such gateway endpoint\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_addresses_localhost_and_the_names_given_are_answered() {
        let names = vec!["gateway.internal".to_owned()];
        for host in [
            "127.0.0.1",
            "127.0.0.1:8080",
            "10.1.2.3:9090",
            "[::1]",
            "[::1]:8080",
            "localhost",
            "LOCALHOST:8080",
            "localhost.:8080",
            "gateway.internal",
            "Gateway.Internal:443",
            "gateway.internal.",
        ] {
            assert!(host_allowed(host, &names), "{host} is refused");
        }
        for host in [
            "",
            "evil.example",
            "evil.example:8080",
            "127.0.0.1.evil.example",
            "localhost.evil.example",
            "gateway.internal.evil.example",
            "evilgateway.internal",
            "127.0.0.1:8080:80",
            "127.0.0.1:",
            "127.0.0.1:123456",
            "127.0.0.1:80x",
            "[::1",
            "[::1]x",
            "[evil.example]:80",
            "user@127.0.0.1",
        ] {
            assert!(!host_allowed(host, &names), "{host} is answered");
        }
        assert!(!host_allowed("gateway.internal", &[]));
    }

    #[test]
    fn base64_pads_like_the_standard() {
        for (bytes, text) in [
            (&b""[..], ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (b"\xff\xfe\xfd", "//79"),
        ] {
            assert_eq!(base64(bytes), text);
        }
    }

    #[test]
    fn the_policy_allows_the_dashboard_script_by_its_hash() {
        let policy = content_security_policy("<p><script>alert(1)</script>");
        // printf 'alert(1)' | openssl dgst -sha256 -binary | base64
        assert!(
            policy.contains("script-src 'sha256-bhHHL3z2vDgxUt0W3dWQOrprscmda2Y5pLsLg4GF+pI='"),
            "{policy}"
        );
        assert!(policy.starts_with("default-src 'none';"));
        assert!(!content_security_policy(DASHBOARD).contains("unsafe-eval"));
    }
}
