//! The `Idempotency-Key` header mode (IETF draft-ietf-httpapi-idempotency-key-header,
//! Stripe's behaviour): 422 on reuse with another payload, 409 in strict mode
//! while in flight, 400 when missing where required or malformed.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use tower::Layer;
use tower_idempotency::{ErrorKind, IdempotencyLayer, KeyHeader};

use crate::support::*;

fn keyed(key: Option<&str>, body: &'static str) -> Request<Full<Bytes>> {
    let mut request = Request::post("/v1/charges").header("content-type", "application/json");
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    request
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

#[tokio::test]
async fn same_key_same_payload_replays_and_another_payload_is_422() {
    let (inner, calls) = numbered();
    let service = IdempotencyLayer::builder()
        .idempotency_key_header(KeyHeader::Optional)
        .build()
        .layer(inner);
    let first = fetch(&service, keyed(Some("order-42"), r#"{"amount":100}"#)).await;
    // The same key with the same payload (keys reordered: same JSON) replays.
    let again = fetch(&service, keyed(Some("order-42"), r#"{ "amount" : 100 }"#)).await;
    assert_eq!(again.body, first.body);
    assert!(again.cache_status().contains("hit"));
    // The quoted form of RFC 8941 names the same key.
    let quoted = fetch(&service, keyed(Some("\"order-42\""), r#"{"amount":100}"#)).await;
    assert_eq!(quoted.body, first.body);

    assert_eq!(
        rejection(&service, keyed(Some("order-42"), r#"{"amount":999}"#)).await,
        (422, Some(ErrorKind::KeyReused))
    );
    // Another key with the other payload is a new request.
    fetch(&service, keyed(Some("order-43"), r#"{"amount":999}"#)).await;
    assert_eq!(calls.get(), 2);
}

#[tokio::test]
async fn the_key_names_the_request_whatever_else_differs_in_the_body_fingerprint() {
    // Two different keys with the same payload are two requests: the client
    // said so.
    let (inner, calls) = numbered();
    let service = IdempotencyLayer::builder()
        .idempotency_key_header(KeyHeader::Optional)
        .build()
        .layer(inner);
    fetch(&service, keyed(Some("a"), "{}")).await;
    fetch(&service, keyed(Some("b"), "{}")).await;
    assert_eq!(calls.get(), 2);
}

#[tokio::test]
async fn missing_and_malformed_keys_are_400() {
    let (inner, calls) = numbered();
    let required = IdempotencyLayer::builder()
        .idempotency_key_header(KeyHeader::Required)
        .build()
        .layer(inner.clone());
    assert_eq!(
        rejection(&required, keyed(None, "{}")).await,
        (400, Some(ErrorKind::MissingKey))
    );
    let long = "k".repeat(256);
    for bad in ["", "\"unterminated", "has space", long.as_str()] {
        let request = Request::post("/")
            .header("idempotency-key", bad)
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(
            rejection(&required, request).await,
            (400, Some(ErrorKind::InvalidKey)),
            "{bad:?}"
        );
    }
    assert_eq!(calls.get(), 0);

    // Optional: a request without the header is keyed by its content.
    let optional = IdempotencyLayer::builder()
        .idempotency_key_header(KeyHeader::Optional)
        .build()
        .layer(inner);
    fetch(&optional, keyed(None, "{}")).await;
    fetch(&optional, keyed(None, "{}")).await;
    assert_eq!(calls.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn in_flight_duplicates_wait_or_get_409_in_strict_mode() {
    for strict in [false, true] {
        let (inner, calls, gate) =
            gated(|seen: &Seen| respond(200, format!("charged once, call {}", seen.call)));
        let service = IdempotencyLayer::builder()
            .idempotency_key_header(KeyHeader::Required)
            .strict(strict)
            .build()
            .layer(inner);
        let first = tokio::spawn({
            let service = service.clone();
            async move { fetch(&service, keyed(Some("k1"), "{}")).await }
        });
        until("the first call reached upstream", || calls.get() == 1).await;
        // Another payload under the same key, while in flight: 422 at once.
        assert_eq!(
            rejection(&service, keyed(Some("k1"), "[]")).await,
            (422, Some(ErrorKind::KeyReused))
        );
        if strict {
            assert_eq!(
                rejection(&service, keyed(Some("k1"), "{}")).await,
                (409, Some(ErrorKind::InFlight))
            );
            gate.notify_one();
        } else {
            let second = tokio::spawn({
                let service = service.clone();
                async move { fetch(&service, keyed(Some("k1"), "{}")).await }
            });
            // The second joins the first's flight.
            settle().await;
            gate.notify_one();
            assert_eq!(&second.await.unwrap().body[..], b"charged once, call 1");
        }
        assert_eq!(&first.await.unwrap().body[..], b"charged once, call 1");
        assert_eq!(calls.get(), 1);
    }
}
