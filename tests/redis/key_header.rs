//! The `Idempotency-Key` mode across two instances sharing Redis: the key,
//! the payload fingerprint and the in-flight state are fleet-wide.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use tower::Layer;
use tower_idempotency::{ErrorKind, IdempotencyLayer, KeyHeader};

use crate::{store, support::*};
use redis_server::RedisServer;

fn keyed(key: &str, body: &'static str) -> Request<Full<Bytes>> {
    Request::post("/v1/refunds")
        .header("idempotency-key", key)
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

async fn instance(url: &str, strict: bool) -> IdempotencyLayer {
    IdempotencyLayer::builder()
        .redis(store(url).connect().await.unwrap())
        .idempotency_key_header(KeyHeader::Required)
        .strict(strict)
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuse_conflict_and_replay_hold_across_instances() {
    let server = RedisServer::start();
    let (inner, calls, gate) =
        gated(|seen: &Seen| respond(200, format!("refund issued, call {}", seen.call)));
    let a = instance(&server.url(), false).await.layer(inner.clone());
    let b = instance(&server.url(), false).await.layer(inner.clone());
    let strict_b = instance(&server.url(), true).await.layer(inner);

    // A is processing refund r-1.
    let first = tokio::spawn({
        let a = a.clone();
        async move { fetch(&a, keyed("r-1", r#"{"amount":5}"#)).await }
    });
    until("A called upstream", || calls.get() == 1).await;
    // Elsewhere, the same key while in flight: strict answers 409 at once…
    assert_eq!(
        rejection(&strict_b, keyed("r-1", r#"{"amount":5}"#)).await,
        (409, Some(ErrorKind::InFlight))
    );
    // …the default waits, and replays A's answer.
    let waiting = tokio::spawn({
        let b = b.clone();
        async move { fetch(&b, keyed("r-1", r#"{"amount":5}"#)).await }
    });
    // B's wait on Redis has no signal outside the crate: give it time to
    // start (were it late, it would replay A's stored answer all the same).
    tokio::time::sleep(Duration::from_millis(100)).await;
    gate.notify_one();
    let first = first.await.unwrap();
    assert_eq!(&first.body[..], b"refund issued, call 1");
    assert_eq!(waiting.await.unwrap().body, first.body);

    // The same key with another payload, on the other instance: 422.
    assert_eq!(
        rejection(&b, keyed("r-1", r#"{"amount":500}"#)).await,
        (422, Some(ErrorKind::KeyReused))
    );
    assert_eq!(calls.get(), 1);
}
