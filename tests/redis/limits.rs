//! Whatever numbers the store is given, no key of ours lives without an
//! expiry, every lease is released and every waiter is told.

use std::time::{Duration, Instant};

use tokio::time::timeout;
use tower::Layer;
use tower_idempotency::{IdempotencyLayer, RedisStore};

use crate::{store, support::*};
use redis_server::RedisServer;

/// Every key under our prefix, with its `PTTL`.
fn our_keys(server: &RedisServer) -> Vec<(String, i64)> {
    server
        .cli(&["--scan", "--pattern", "tidem:*"])
        .lines()
        .filter(|name| !name.is_empty())
        .map(|name| {
            let pttl = server.cli(&["PTTL", name]).parse().unwrap();
            (name.to_owned(), pttl)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_ttls_never_leave_a_key_without_expiry_nor_a_waiter_waiting() {
    let server = RedisServer::start();
    let (inner, calls) = upstream(|seen: Seen| async move {
        // Long enough for the waiter to find the call running.
        tokio::time::sleep(Duration::from_millis(100)).await;
        respond(200, format!("answer #{}", seen.call))
    });
    let forever = IdempotencyLayer::builder()
        .redis(store(&server.url()).connect().await.unwrap())
        .max_ttl(Duration::MAX)
        .ttl(Duration::MAX)
        .control_headers(true)
        .build()
        .layer(inner.clone());
    let waiting = IdempotencyLayer::builder()
        .redis(store(&server.url()).connect().await.unwrap())
        .build()
        .layer(inner);

    for i in 0..8 {
        let body: &'static str = Box::leak(format!("prompt {i}").into_boxed_str());
        let mut request = post("/", body);
        if i % 2 == 1 {
            request.headers_mut().insert(
                "x-idempotency-ttl",
                http::HeaderValue::from_static("18446744073709551615"),
            );
        }
        // Another instance asks for the same while the call runs: it must
        // be woken when the call completes, not when the 10 s lease ends.
        let started = Instant::now();
        let before = calls.get();
        let leader = tokio::spawn({
            let forever = forever.clone();
            let request = request.clone();
            async move { fetch(&forever, request).await }
        });
        // The leader is refused at once or holds the lease for its call.
        until("the leader is refused or calls upstream", || {
            leader.is_finished() || calls.get() > before
        })
        .await;
        let waiter = timeout(Duration::from_secs(3), fetch(&waiting, request))
            .await
            .expect("the waiter was never told the call completed");
        let leader = leader.await.unwrap();
        // The largest TTL the builder allows reaches the store; a larger
        // one from a caller is refused before it gets there.
        let refused = if i % 2 == 1 { 400 } else { 200 };
        assert_eq!(
            (leader.status, waiter.status),
            (refused, 200),
            "request {i}"
        );
        assert!(started.elapsed() < Duration::from_secs(2), "request {i}");
    }
    assert!(calls.get() >= 4);

    // The store lands after the last byte: let it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let keys = our_keys(&server);
    assert!(!keys.is_empty());
    let immortal: Vec<_> = keys.iter().filter(|(_, pttl)| *pttl <= 0).collect();
    assert!(immortal.is_empty(), "keys without an expiry: {immortal:?}");
    assert!(
        keys.iter().all(|(name, _)| !name.ends_with(":lease")),
        "every lease was released: {keys:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_settings_at_zero_or_their_maximum_neither_panic_nor_spin() {
    let server = RedisServer::start();
    let (inner, calls) = numbered();
    for (what, at) in [("zero", Duration::ZERO), ("maximum", Duration::MAX)] {
        let redis = RedisStore::builder(server.url())
            .timeout(at)
            .write_timeout(at)
            .lease(at)
            .poll_interval(at)
            .flush_interval(at)
            .circuit_breaker(if at.is_zero() { 0 } else { u32::MAX }, at)
            .connect()
            .await
            .unwrap_or_else(|error| panic!("{what}: {error}"));
        let layer = IdempotencyLayer::builder().redis(redis).build();
        let service = layer.layer(inner.clone());
        let before = calls.get();
        for round in 0..3 {
            let answer = timeout(Duration::from_secs(5), fetch(&service, post("/", what)))
                .await
                .unwrap_or_else(|_| panic!("{what}: round {round} hung"));
            assert_eq!(answer.status, 200, "{what}");
        }
        assert!(calls.get() - before <= 3, "{what}");
    }
    // A breaker that opens at once and never closes: a failure must not
    // panic (the cool-down's end is past any clock).
    let redis = RedisStore::builder(server.url())
        .timeout(Duration::from_millis(50))
        .circuit_breaker(1, Duration::MAX)
        .connect()
        .await
        .unwrap();
    let service = IdempotencyLayer::builder()
        .redis(redis)
        .build()
        .layer(inner.clone());
    server.pause();
    for round in 0..3 {
        let answer = timeout(Duration::from_secs(5), fetch(&service, post("/", "paused")))
            .await
            .unwrap_or_else(|_| panic!("round {round} hung"));
        assert_eq!(answer.status, 200);
    }
    server.resume();
}
