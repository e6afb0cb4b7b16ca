//! A bounded soak: many concurrent clients send a mix of requests through two
//! instances sharing one `redis-server`, while Redis is paused, killed and
//! restarted under them. Every completed answer must be the answer to that
//! client's own request, no request may fail, upstream calls stay bounded,
//! and nothing is left over once the traffic stops.
//!
//! A second test runs the same mix through three instances sharing a Redis
//! Cluster with replicas, one master killed mid-run (`cluster.rs`).
//!
//! Runs for 30 s of traffic by default (the cluster test 12 s, longer if the
//! failover is slow); `SOAK_SECONDS=600 cargo test --test soak --
//! --nocapture` runs longer. `SOAK_SEED` replays a mix.

#[path = "../support/mod.rs"]
mod support;

mod chaos;
mod cluster;
mod traffic;
mod upstream;

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use tower::Layer;
use tower_idempotency::{IdempotencyLayer, RedisStore, RedisStoreBuilder};

use support::redis_server::RedisServer;
use traffic::{Catalogue, Tally, MAX_REQUEST_BODY};

/// Seconds of traffic when `SOAK_SECONDS` is not set.
const DEFAULT_SECONDS: u64 = 30;

/// Concurrent clients (each also spawns bursts of duplicates).
const CLIENTS: usize = 24;

/// The L1 byte budget of each instance: small enough that big answers evict.
const L1_BUDGET: u64 = 6 << 20;

/// A small deterministic random source (xorshift64*).
pub struct Dice(pub u64);

impl Dice {
    pub fn roll(&mut self) -> u64 {
        self.0 |= 1;
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.roll() % n as u64) as usize
    }
}

/// One instance: its own L1, its own connection to the shared Redis, with
/// short timeouts so that faults cost little time.
async fn instance(url: &str) -> IdempotencyLayer {
    instance_over(RedisStore::builder(url), Duration::from_secs(2)).await
}

/// An instance over the Redis `redis` reaches, tuned as above, whose leases
/// last `lease` unless renewed.
async fn instance_over(redis: RedisStoreBuilder, lease: Duration) -> IdempotencyLayer {
    let redis = redis
        .timeout(Duration::from_millis(50))
        .write_timeout(Duration::from_millis(200))
        .connect_timeout(Duration::from_millis(200))
        .lease(lease)
        .poll_interval(Duration::from_millis(100))
        .flush_interval(Duration::from_millis(250))
        .circuit_breaker(3, Duration::from_millis(300))
        .connect()
        .await
        .expect("connect to the soak's redis");
    IdempotencyLayer::builder()
        .redis(redis)
        .l1_capacity(L1_BUDGET)
        .max_request_body(MAX_REQUEST_BODY)
        .max_response_body(2 << 20)
        .wait_timeout(Duration::from_secs(2))
        .build()
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.parse().ok()
}

/// `SOAK_SEED`, or a fresh seed from the clock.
fn seed() -> u64 {
    env_u64("SOAK_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    })
}

/// Polls `check` every 20 ms for at most `limit`.
async fn settles<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_under_redis_chaos_never_misanswer() {
    let seconds = env_u64("SOAK_SECONDS").unwrap_or(DEFAULT_SECONDS);
    let seed = seed();
    println!("soak: {seconds} s of traffic, SOAK_SEED={seed}");
    let started = Instant::now();

    let server = Arc::new(RedisServer::start());
    let (inner, ledger, unstick) = upstream::service();
    let a = instance(&server.url()).await;
    let b = instance(&server.url()).await;
    let services = [a.layer(inner.clone()), b.layer(inner)];
    let catalogue = Arc::new(Catalogue::new());
    let tally = Arc::new(Tally::default());
    let metrics = tokio::runtime::Handle::current().metrics();

    // Warm both instances (lazy connections, subscriptions), then count the
    // tasks that live as long as the layers.
    for service in &services {
        let call = traffic::Call::new(
            "POST",
            "/v1/plain",
            None,
            "text/plain",
            bytes::Bytes::from("warm up"),
        );
        let answer = support::fetch(service, call.request()).await;
        assert_eq!(answer.status, 200);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let baseline_tasks = metrics.num_alive_tasks();

    // Traffic, and chaos under it.
    let stop = Arc::new(AtomicBool::new(false));
    let max_events = (seconds / 3).max(4) as u32;
    let chaos = chaos::start(
        Arc::clone(&server),
        Arc::clone(&stop),
        seed ^ 0x5eed,
        max_events,
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            tokio::spawn(traffic::client(
                services.to_vec(),
                Arc::clone(&catalogue),
                Arc::clone(&tally),
                client,
                seed.wrapping_add((client as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
                deadline,
            ))
        })
        .collect();
    for client in clients {
        client.await.expect("a client panicked");
    }
    let traffic_took = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let chaos = tokio::task::spawn_blocking(move || chaos.join().expect("chaos thread"))
        .await
        .unwrap();
    // The stuck upstream calls answer now: their flights end, their leases go.
    unstick.send_replace(true);

    // No leftovers once the traffic stops.
    let idle = settles(Duration::from_secs(5), || async {
        a.in_flight() == 0 && b.in_flight() == 0
    })
    .await;
    let tasks_back = settles(Duration::from_secs(5), || async {
        metrics.num_alive_tasks() <= baseline_tasks
    })
    .await;
    let alive_tasks = metrics.num_alive_tasks();
    let leases_gone = settles(Duration::from_secs(5), || async {
        server
            .cli(&["--scan", "--pattern", "tidem:*:lease"])
            .trim()
            .is_empty()
    })
    .await;
    let mut l1 = [(0, 0); 2];
    for (usage, layer) in l1.iter_mut().zip([&a, &b]) {
        *usage = layer.l1_usage().await;
    }

    // Upstream calls against what was asked.
    let calls = ledger.snapshot();
    let sent = tally.sent.lock().unwrap().clone();
    let total_requests = tally.requests.load(Ordering::Relaxed);
    let total_calls: u64 = calls.values().map(|&n| u64::from(n)).sum();
    let distinct_cacheable = sent.values().filter(|(_, cacheable)| *cacheable).count() as u64;
    let uncacheable_requests: u64 = sent
        .values()
        .filter(|(_, cacheable)| !*cacheable)
        .map(|(n, _)| u64::from(*n))
        .sum();
    // One call per distinct request, two when an outage kept the instances
    // from seeing each other's lease or entry; an uncacheable request may
    // call every time.
    let per_key_bound = 2 * (1 + chaos.events());
    let mut over_bound = Vec::new();
    let mut unknown = 0;
    let mut cacheable_calls = 0u64;
    for (digest, &n) in &calls {
        match sent.get(digest) {
            // The warm-up requests.
            None => unknown += 1,
            Some(&(requests, cacheable)) => {
                if n > requests {
                    over_bound.push(format!(
                        "{}: {n} calls for {requests} requests",
                        upstream::hex(digest)
                    ));
                } else if cacheable {
                    cacheable_calls += u64::from(n);
                    if n > per_key_bound {
                        over_bound.push(format!("{}: {n} calls", upstream::hex(digest)));
                    }
                }
            }
        }
    }

    let (sa, sb) = (a.stats(), b.stats());
    let summary = format!(
        "soak: {} s, {} requests ({} completed, {} cancelled, {} MiB), {} upstream calls \
         ({} distinct cacheable, {} uncacheable requests), hits {} (l1 {}, l2 {}), coalesced {}, \
         {} stuck given up, {} upstream failures passed through, \
         chaos {} pauses + {} kills, store errors {}, breaker skips {}, wait timeouts {}",
        traffic_took.as_secs(),
        total_requests,
        tally.completed.load(Ordering::Relaxed),
        tally.cancelled.load(Ordering::Relaxed),
        tally.bytes.load(Ordering::Relaxed) >> 20,
        total_calls,
        distinct_cacheable,
        uncacheable_requests,
        sa.hits.total() + sb.hits.total(),
        sa.hits.l1 + sb.hits.l1,
        sa.hits.l2 + sb.hits.l2,
        sa.coalesced + sb.coalesced,
        tally.gave_up.load(Ordering::Relaxed),
        tally.upstream_failures.load(Ordering::Relaxed),
        chaos.pauses,
        chaos.kills,
        sa.store.errors + sb.store.errors,
        sa.store.skipped + sb.store.skipped,
        sa.wait_timeouts + sb.wait_timeouts,
    );
    println!("{summary}");

    let wrong = tally.wrong.lock().unwrap();
    assert!(
        wrong.is_empty(),
        "{} wrong answers, first: {}",
        wrong.len(),
        wrong[0]
    );
    let failed = tally.failed.lock().unwrap();
    assert!(
        failed.is_empty(),
        "{} failed requests, first: {}",
        failed.len(),
        failed[0]
    );
    assert!(
        chaos.pauses > 0 && chaos.kills > 0,
        "the chaos never struck: {chaos:?}"
    );
    assert!(
        unknown <= 2,
        "{unknown} upstream calls for requests nobody sent"
    );
    assert!(
        over_bound.is_empty(),
        "too many upstream calls: {over_bound:?}"
    );
    assert!(
        cacheable_calls <= 2 * distinct_cacheable,
        "{cacheable_calls} upstream calls for {distinct_cacheable} distinct cacheable requests"
    );
    assert!(
        total_calls <= total_requests + 2,
        "more upstream calls than requests"
    );
    assert!(
        idle,
        "flights left in progress: {} and {}",
        a.in_flight(),
        b.in_flight()
    );
    assert!(
        leases_gone,
        "leases left in redis: {}",
        server.cli(&["--scan", "--pattern", "tidem:*:lease"])
    );
    assert!(
        tasks_back,
        "{alive_tasks} tasks alive after the soak, {baseline_tasks} before it"
    );
    for (entries, bytes) in l1 {
        assert!(
            bytes <= L1_BUDGET,
            "L1 holds {bytes} bytes in {entries} entries, over {L1_BUDGET}"
        );
    }
    println!("soak: done in {:?}", started.elapsed());
}
