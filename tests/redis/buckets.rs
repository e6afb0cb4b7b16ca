//! Sample buckets across instances: the count of a request's answers is kept
//! in Redis, so every instance fills the same n buckets.

use std::collections::BTreeSet;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use tower::Layer;
use tower_idempotency::IdempotencyLayer;

use crate::{store, support::*};
use redis_server::RedisServer;

fn ask() -> Request<Full<Bytes>> {
    Request::post("/v1/chat")
        .header("x-idempotency-bucket", "3")
        .body(Full::new(Bytes::from_static(b"write me a poem")))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_fill_three_buckets_between_them() {
    let server = RedisServer::start();
    let instance = || async {
        IdempotencyLayer::builder()
            .control_headers(true)
            .redis(store(&server.url()).connect().await.unwrap())
            .build()
    };
    let (a, b) = (instance().await, instance().await);
    let (inner, calls) = numbered();
    let (service_a, service_b) = (a.layer(inner.clone()), b.layer(inner));
    let mut bodies = BTreeSet::new();
    for _ in 0..20 {
        bodies.insert(fetch(&service_a, ask()).await.body);
        bodies.insert(fetch(&service_b, ask()).await.body);
    }
    assert_eq!(calls.get(), 3, "three answers for the whole fleet");
    assert_eq!(bodies.len(), 3);
    assert_eq!(a.stats().bucket_hits + b.stats().bucket_hits, 37);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_buckets_are_counted_locally() {
    let server = RedisServer::start();
    let layer = IdempotencyLayer::builder()
        .control_headers(true)
        .redis(store(&server.url()).connect().await.unwrap())
        .build();
    drop(server);
    let (inner, calls) = numbered();
    let service = layer.layer(inner);
    for _ in 0..10 {
        assert_eq!(fetch(&service, ask()).await.status, 200);
    }
    assert_eq!(calls.get(), 3);
}
