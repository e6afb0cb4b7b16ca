//! Replays: status, headers, bytes, `age`, `cache-status`, expiry.

use std::time::Duration;

use tower::Layer;
use tower_idempotency::{IdempotencyLayer, Key};

use crate::support::*;

#[tokio::test]
async fn replay_is_byte_identical_with_age_and_cache_status() {
    let (inner, calls) = upstream(|_| async {
        http::Response::builder()
            .status(201)
            .header("content-type", "application/json")
            .header("x-upstream", "a")
            .header("x-upstream", "b")
            .body(full(&b"{\"id\":\"resp_1\",\"bytes\":\"\xff\x00\"}"[..]))
            .unwrap()
    });
    let service = IdempotencyLayer::builder()
        .ttl(Duration::from_secs(120))
        .build()
        .layer(inner);
    let first = fetch(&service, post("/", "q")).await;
    assert_eq!(
        first.cache_status(),
        "tower-idempotency; fwd=uri-miss; stored"
    );
    assert_eq!(first.header("age"), None);

    let replay = fetch(&service, post("/", "q")).await;
    assert_eq!(replay.status, 201);
    assert_eq!(replay.body, first.body);
    let upstream: Vec<_> = replay.headers.get_all("x-upstream").iter().collect();
    assert_eq!(upstream, ["a", "b"]);
    assert_eq!(replay.header("content-type"), Some("application/json"));
    assert_eq!(replay.header("age"), Some("0"));
    let ttl: u64 = replay
        .cache_status()
        .strip_prefix("tower-idempotency; hit; ttl=")
        .expect("a hit with a ttl")
        .parse()
        .unwrap();
    assert!((118..=120).contains(&ttl), "ttl={ttl}");
    assert_eq!(calls.get(), 1);
}

#[tokio::test]
async fn age_counts_seconds_since_the_response_was_stored() {
    let (inner, _) = numbered();
    let service = IdempotencyLayer::new().layer(inner);
    fetch(&service, post("/", "q")).await;
    // Ages are whole seconds of the real clock (stored in the record).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let replay = fetch(&service, post("/", "q")).await;
    assert_eq!(replay.header("age"), Some("1"));
}

#[tokio::test]
async fn entries_expire_after_their_ttl() {
    let (inner, calls) = numbered();
    let service = IdempotencyLayer::builder()
        .ttl(Duration::from_millis(300))
        .build()
        .layer(inner);
    fetch(&service, post("/", "q")).await;
    fetch(&service, post("/", "q")).await;
    assert_eq!(calls.get(), 1);
    // L1 expiry runs on the real clock, which a paused Tokio clock does not move.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        &fetch(&service, post("/", "q")).await.body[..],
        b"answer #2"
    );
}

#[tokio::test]
async fn upstream_cache_status_members_come_first() {
    let (inner, _) = upstream(|_| async {
        http::Response::builder()
            .header("cache-status", "origin-cdn; hit")
            .body(full("x"))
            .unwrap()
    });
    let service = IdempotencyLayer::new().layer(inner);
    fetch(&service, post("/", "q")).await;
    let replay = fetch(&service, post("/", "q")).await;
    let members: Vec<_> = replay
        .headers
        .get_all("cache-status")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(members[0], "origin-cdn; hit");
    assert!(members[1].starts_with("tower-idempotency; hit"));
}

#[tokio::test]
async fn cache_status_can_be_turned_off() {
    let (inner, _) = numbered();
    let service = IdempotencyLayer::builder()
        .cache_status_header(false)
        .build()
        .layer(inner);
    fetch(&service, post("/", "q")).await;
    let replay = fetch(&service, post("/", "q")).await;
    assert_eq!(replay.header("cache-status"), None);
    assert_eq!(replay.header("age"), Some("0"));
}

#[tokio::test]
async fn purge_forgets_one_entry() {
    let (inner, calls) = numbered();
    let layer = IdempotencyLayer::new();
    let service = layer.layer(inner);
    let response = tower::ServiceExt::oneshot(service.clone(), post("/", "q"))
        .await
        .unwrap();
    let key = *response
        .extensions()
        .get::<Key>()
        .expect("the key is in the extensions");
    drop(response);
    // The dropped response's call completes and is stored.
    until("the flight is over", || layer.in_flight() == 0).await;
    fetch(&service, post("/", "q")).await;
    assert_eq!(calls.get(), 1);
    layer.purge(&key).await;
    assert_eq!(
        &fetch(&service, post("/", "q")).await.body[..],
        b"answer #2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_after_the_last_byte_is_always_a_hit() {
    // The entry is stored before the caller sees the end of the body, so an
    // immediate repeat never lands in the gap.
    let (inner, calls) = numbered();
    let service = IdempotencyLayer::new().layer(inner);
    for i in 0..200 {
        let body: &'static str = Box::leak(format!("prompt {i}").into_boxed_str());
        let first = fetch(&service, post("/", body)).await;
        let again = fetch(&service, post("/", body)).await;
        assert!(
            again.cache_status().starts_with("tower-idempotency; hit"),
            "round {i}: {}",
            again.cache_status()
        );
        assert_eq!(again.body, first.body);
    }
    assert_eq!(calls.get(), 200);
}

#[tokio::test]
async fn a_stored_answer_with_very_many_header_values_replays_without_a_panic() {
    // Past what `HeaderMap::with_capacity` accepts (about 24,576 once the
    // replay's own headers are added): the stored map holds them all, and
    // its replay must too.
    const VALUES: usize = 24_600;
    let (inner, calls) = upstream(|_| async {
        let mut response = respond(200, "many");
        for _ in 0..VALUES {
            response
                .headers_mut()
                .append("x-many", http::HeaderValue::from_static("v"));
        }
        response
    });
    let service = IdempotencyLayer::new().layer(inner);
    let first = fetch(&service, post("/", "q")).await;
    assert_eq!(first.headers.get_all("x-many").iter().count(), VALUES);
    let replay = fetch(&service, post("/", "q")).await;
    assert!(
        replay.cache_status().contains("hit"),
        "{}",
        replay.cache_status()
    );
    assert_eq!(replay.headers.get_all("x-many").iter().count(), VALUES);
    assert_eq!(replay.body, first.body);
    assert_eq!(calls.get(), 1);
}
