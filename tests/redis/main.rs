//! The Redis L2 against real `redis-server` processes these tests start on
//! free loopback ports: sharing across instances, faults, a 3-node cluster.

#[path = "../support/mod.rs"]
mod support;

mod buckets;
mod cluster;
mod faults;
mod key_header;
mod leases;
mod limits;
mod sharing;
mod stream_faults;
mod stream_support;
mod streams;

use std::time::Duration;

use tower_idempotency::{IdempotencyLayer, RedisStore, RedisStoreBuilder};

/// A store on `url`, with waits that only a notification can cut short:
/// a 5 s fallback poll and a 10 s lease.
pub fn store(url: &str) -> RedisStoreBuilder {
    RedisStore::builder(url)
        .poll_interval(Duration::from_secs(5))
        .lease(Duration::from_secs(10))
}

/// One application instance: its own layer (own L1), sharing `redis`.
pub async fn instance(redis: RedisStoreBuilder) -> IdempotencyLayer {
    IdempotencyLayer::builder()
        .redis(redis.connect().await.expect("connect to the test redis"))
        .build()
}

/// The name of an entry's hash in Redis (see the `store::redis` docs), for
/// tests that tamper with it.
pub fn entry_name(namespace: &str, key: &tower_idempotency::Key) -> String {
    use sha2::{Digest, Sha256};
    let tag: String = Sha256::digest(namespace.as_bytes())[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("tidem:{tag}:{{{key}}}")
}

/// The key the layer gives a request.
pub async fn key_of(
    layer: &IdempotencyLayer,
    request: &http::Request<http_body_util::Full<bytes::Bytes>>,
) -> tower_idempotency::Key {
    use http_body_util::BodyExt;
    let (parts, body) = request.clone().into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    layer.key_for(&parts, &body).unwrap()
}

/// Waits until `layer`'s L1 is empty, for at most two seconds.
pub async fn l1_emptied(layer: &IdempotencyLayer) -> bool {
    for _ in 0..200 {
        if layer.l1_usage().await.0 == 0 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}
