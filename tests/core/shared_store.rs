//! The same rules with a shared Redis L2, started by the test: `Vary` on an
//! L2 hit, and a maximal wait that does not overflow.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::Layer;
use tower_idempotency::{IdempotencyLayer, RedisStore};

use crate::support::{redis_server::RedisServer, *};

async fn instance(server: &RedisServer, wait: Duration) -> IdempotencyLayer {
    let store = RedisStore::builder(server.url())
        .connect()
        .await
        .expect("connect to the test redis");
    IdempotencyLayer::builder()
        .redis(store)
        .wait_timeout(wait)
        .build()
}

/// The name of an entry's hash in Redis (see the `store::redis` docs).
fn entry_name(key: &tower_idempotency::Key) -> String {
    use sha2::{Digest, Sha256};
    let tag: String = Sha256::digest(b"")[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("tidem:{tag}:{{{key}}}")
}

fn from(origin: &'static str) -> Request<Full<Bytes>> {
    let mut request = post("/v1/data", "q");
    request
        .headers_mut()
        .insert("origin", http::HeaderValue::from_static(origin));
    request
}

async fn key_of(layer: &IdempotencyLayer, request: Request<Full<Bytes>>) -> String {
    let (parts, body) = request.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    entry_name(&layer.key_for(&parts, &body).unwrap())
}

/// Waits until the entry in Redis holds a record whose body is `body`.
async fn stored(server: &RedisServer, entry: &str, body: &str) -> bool {
    eventually(Duration::from_secs(3), || {
        server.cli(&["HGET", entry, "r"]).contains(body)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_l2_hit_honours_vary() {
    let server = RedisServer::start();
    let (inner, calls) = upstream(|seen: Seen| async move {
        let origin = seen.head.headers["origin"].to_str().unwrap().to_owned();
        Response::builder()
            .header("vary", "Origin")
            .body(full(format!("for {origin} #{}", seen.call)))
            .unwrap()
    });
    let one = instance(&server, Duration::from_secs(60)).await;
    let two = instance(&server, Duration::from_secs(60)).await;
    let entry = key_of(&one, from("https://a.example")).await;
    let one = one.layer(inner.clone());
    let two_service = two.layer(inner);

    let a = fetch(&one, from("https://a.example")).await;
    assert_eq!(&a.body[..], b"for https://a.example #1");
    assert!(stored(&server, &entry, "for https://a.example #1").await);

    // Same value on another instance: an L2 hit.
    let a_there = fetch(&two_service, from("https://a.example")).await;
    assert!(
        a_there.cache_status().contains("hit"),
        "{}",
        a_there.cache_status()
    );
    assert_eq!(a_there.body, a.body);

    // Another value: neither its L1 nor the L2 entry answers it.
    let b = fetch(&two_service, from("https://b.example")).await;
    assert_eq!(&b.body[..], b"for https://b.example #2");
    assert!(stored(&server, &entry, "for https://b.example #2").await);

    // The fresh answer replaced the entry in the L2 as well.
    let b_here = fetch(&one, from("https://b.example")).await;
    assert!(
        b_here.cache_status().contains("hit"),
        "{}",
        b_here.cache_status()
    );
    assert_eq!(b_here.body, b.body);
    assert_eq!(calls.get(), 2);
}

#[tokio::test]
async fn a_maximal_wait_timeout_with_a_shared_store_does_not_overflow() {
    let server = RedisServer::start();
    let (inner, calls) = numbered();
    let service = instance(&server, Duration::MAX).await.layer(inner);
    let answer = fetch(&service, post("/", "q")).await;
    assert_eq!(&answer.body[..], b"answer #1");
    assert_eq!(calls.get(), 1);
}
