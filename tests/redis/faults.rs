//! Redis paused, killed, restarted empty: requests keep succeeding, only
//! slower; caching resumes when Redis is back.

use std::time::{Duration, Instant};

use tower::Layer;
use tower_idempotency::{IdempotencyLayer, RedisStore};

use crate::support::*;
use redis_server::RedisServer;

const TIMEOUT: Duration = Duration::from_millis(50);

async fn resilient(url: &str) -> IdempotencyLayer {
    let redis = RedisStore::builder(url)
        .timeout(TIMEOUT)
        .write_timeout(Duration::from_millis(200))
        .circuit_breaker(3, Duration::from_millis(300))
        .poll_interval(Duration::from_millis(100))
        .connect()
        .await
        .unwrap();
    IdempotencyLayer::builder().redis(redis).build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_survive_redis_paused_killed_and_restarted_empty() {
    let server = RedisServer::start();
    let upstream_latency = Duration::from_millis(20);
    let (inner, calls) = upstream(move |seen: Seen| async move {
        tokio::time::sleep(upstream_latency).await;
        respond(
            200,
            format!(
                "{} -> call {}",
                String::from_utf8_lossy(&seen.body),
                seen.call
            ),
        )
    });
    let layer = resilient(&server.url()).await;
    let service = layer.layer(inner.clone());
    // A request may spend one look-up timeout on Redis, then the upstream call.
    let bound = TIMEOUT + upstream_latency + Duration::from_millis(400);

    let check = |phase: &'static str| {
        let service = service.clone();
        async move {
            for i in 0..20 {
                let body: &'static str = Box::leak(format!("{phase} {}", i % 5).into_boxed_str());
                let started = Instant::now();
                let answer = fetch(&service, post("/", body)).await;
                let took = started.elapsed();
                assert_eq!(answer.status, 200, "{phase}");
                assert!(
                    answer.body.starts_with(body.as_bytes()),
                    "{phase}: a wrong answer"
                );
                assert!(took < bound, "{phase}: a request took {took:?}");
            }
        }
    };

    check("healthy").await;
    server.pause();
    check("paused").await;
    server.kill();
    check("killed").await;
    server.restart();

    // Caching through Redis resumes: a fresh instance finds what this one stores.
    let resumed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let body: &'static str = Box::leak(
                format!("after restart {}", Instant::now().elapsed().as_nanos()).into_boxed_str(),
            );
            fetch(&service, post("/", body)).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            let fresh = resilient(&server.url()).await;
            let before = calls.get();
            let again = fetch(&fresh.layer(inner.clone()), post("/", body)).await;
            if calls.get() == before && again.cache_status().contains("hit") {
                break;
            }
        }
    })
    .await;
    assert!(resumed.is_ok(), "caching never resumed after the restart");
    let stats = layer.stats();
    assert!(stats.store.errors > 0, "the outage was counted: {stats:?}");
    assert!(
        stats.store.skipped > 0,
        "the breaker skipped redis while it was down: {stats:?}"
    );
}

#[tokio::test]
async fn waiters_fall_back_to_polling_when_notifications_are_lost() {
    // A lease held by someone who never publishes: the waiter must look again
    // on its own, and take over once the lease is gone.
    let server = RedisServer::start();
    let (inner, calls) = numbered();
    let layer = resilient(&server.url()).await;
    let request = post("/", "q");
    let lease = format!(
        "{}:lease",
        crate::entry_name("", &crate::key_of(&layer, &request).await)
    );
    server.cli(&["SET", &lease, "silent", "PX", "10000"]);
    let service = layer.layer(inner);
    let waiter = tokio::spawn(async move { fetch(&service, request).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished());
    // The lease goes away without a message.
    server.cli(&["DEL", &lease]);
    let answer = tokio::time::timeout(Duration::from_secs(2), waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&answer.body[..], b"answer #1");
    assert_eq!(calls.get(), 1);
}
