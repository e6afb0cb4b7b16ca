//! What is looked up, what is stored.

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::Full;
use tower::Layer;
use tower_idempotency::IdempotencyLayer;

use crate::support::*;

fn with_header(name: &str, value: &str) -> Request<Full<Bytes>> {
    Request::post("/")
        .header(name, value)
        .body(Full::new(Bytes::from_static(b"q")))
        .unwrap()
}

#[tokio::test]
async fn no_store_is_neither_looked_up_nor_stored() {
    let (inner, calls) = numbered();
    let service = IdempotencyLayer::new().layer(inner);
    fetch(&service, post("/", "q")).await;
    let bypassed = fetch(&service, with_header("cache-control", "no-store")).await;
    assert_eq!(&bypassed.body[..], b"answer #2");
    assert_eq!(bypassed.cache_status(), "tower-idempotency; fwd=bypass");
    // The stored entry is still the first answer.
    assert_eq!(
        &fetch(&service, post("/", "q")).await.body[..],
        b"answer #1"
    );
    assert_eq!(calls.get(), 2);
}

#[tokio::test]
async fn no_cache_skips_the_look_up_but_stores_the_fresh_answer() {
    let (inner, calls) = numbered();
    let layer = IdempotencyLayer::new();
    let service = layer.layer(inner);
    fetch(&service, post("/", "q")).await;
    let fresh = fetch(&service, with_header("cache-control", "no-cache")).await;
    assert_eq!(&fresh.body[..], b"answer #2");
    assert_eq!(
        fresh.cache_status(),
        "tower-idempotency; fwd=request; stored"
    );
    let replay = fetch(&service, post("/", "q")).await;
    assert_eq!(
        &replay.body[..],
        b"answer #2",
        "the fresh answer replaced the old one"
    );
    assert_eq!(calls.get(), 2);
    assert_eq!(layer.stats().refreshes, 1);
}

#[tokio::test]
async fn only_successful_responses_are_stored_by_default() {
    let (inner, calls) = upstream(|seen: Seen| async move {
        respond(
            if seen.call == 1 { 500 } else { 200 },
            format!("#{}", seen.call),
        )
    });
    let service = IdempotencyLayer::new().layer(inner);
    let failed = fetch(&service, post("/", "q")).await;
    assert_eq!(
        (failed.status, failed.cache_status()),
        (500, "tower-idempotency; fwd=uri-miss")
    );
    let ok = fetch(&service, post("/", "q")).await;
    assert_eq!(
        (ok.status, ok.cache_status()),
        (200, "tower-idempotency; fwd=uri-miss; stored")
    );
    assert_eq!(&fetch(&service, post("/", "q")).await.body[..], b"#2");
    assert_eq!(calls.get(), 2);
}

#[tokio::test]
async fn a_store_predicate_can_widen_what_is_stored() {
    let (inner, calls) = upstream(|_| async { respond(404, "no such model") });
    let service = IdempotencyLayer::builder()
        .store_if(|head: &http::response::Parts| head.status.is_success() || head.status == 404)
        .build()
        .layer(inner);
    fetch(&service, post("/", "q")).await;
    let replay = fetch(&service, post("/", "q")).await;
    assert_eq!(
        (replay.status, &replay.body[..]),
        (404, &b"no such model"[..])
    );
    assert_eq!(calls.get(), 1);
}

#[tokio::test]
async fn private_and_no_store_responses_are_never_stored() {
    for directive in ["no-store", "private, max-age=60"] {
        let (inner, calls) = upstream(move |_| async move {
            let mut response = respond(200, "personal");
            response
                .headers_mut()
                .insert("cache-control", directive.parse().unwrap());
            response
        });
        let service = IdempotencyLayer::builder()
            .store_if(|_: &http::response::Parts| true)
            .build()
            .layer(inner);
        fetch(&service, post("/", "q")).await;
        fetch(&service, post("/", "q")).await;
        assert_eq!(calls.get(), 2, "{directive}");
    }
}

#[tokio::test]
async fn set_cookie_and_hop_by_hop_headers_are_not_stored() {
    let (inner, calls) = upstream(|_| async {
        Response::builder()
            .header("set-cookie", "session=secret")
            .header("connection", "x-hop")
            .header("x-hop", "1")
            .header("keep-alive", "timeout=5")
            .header("x-model", "m-1")
            .body(full("answer"))
            .unwrap()
    });
    let service = IdempotencyLayer::new().layer(inner);
    let first = fetch(&service, post("/", "q")).await;
    assert_eq!(
        first.header("set-cookie"),
        Some("session=secret"),
        "the caller that paid gets its cookie"
    );
    let replay = fetch(&service, post("/", "q")).await;
    assert!(replay.cache_status().contains("hit"));
    for name in ["set-cookie", "connection", "x-hop", "keep-alive"] {
        assert_eq!(replay.header(name), None, "{name} must not be replayed");
    }
    assert_eq!(replay.header("x-model"), Some("m-1"));
    assert_eq!(calls.get(), 1);
}

#[tokio::test]
async fn ineligible_methods_pass_through() {
    let (inner, calls) = numbered();
    let layer = IdempotencyLayer::new();
    let service = layer.layer(inner);
    for _ in 0..2 {
        let answer = fetch(&service, request("DELETE", "/thing", "")).await;
        assert_eq!(answer.cache_status(), "tower-idempotency; fwd=method");
    }
    assert_eq!(calls.get(), 2);
    assert_eq!(layer.stats().bypassed.method, 2);

    let (inner, calls) = numbered();
    let service = IdempotencyLayer::builder()
        .methods([Method::PUT])
        .build()
        .layer(inner);
    fetch(&service, request("PUT", "/thing", "v")).await;
    fetch(&service, request("PUT", "/thing", "v")).await;
    fetch(&service, post("/thing", "v")).await;
    fetch(&service, post("/thing", "v")).await;
    assert_eq!(calls.get(), 3);
}

#[tokio::test]
async fn namespace_separates_entries() {
    let (inner, calls) = numbered();
    let v1 = IdempotencyLayer::builder().namespace("model-v1").build();
    let v2 = IdempotencyLayer::builder().namespace("model-v2").build();
    let a = fetch(&v1.layer(inner.clone()), post("/", "q")).await;
    let b = fetch(&v2.layer(inner), post("/", "q")).await;
    assert_ne!(a.body, b.body);
    assert_eq!(calls.get(), 2);
}

#[tokio::test]
async fn custom_key_and_text_normalizer() {
    let (inner, calls) = numbered();
    let service = IdempotencyLayer::builder()
        .normalize_body(tower_idempotency::TextNormalizer)
        .build()
        .layer(inner.clone());
    fetch(&service, post("/", "Explain TCP  handshake")).await;
    fetch(&service, post("/", "explain tcp handshake\n")).await;
    assert_eq!(calls.get(), 1);

    let service = IdempotencyLayer::builder()
        .key_fn(|head: &http::request::Parts, _: &[u8]| {
            head.headers
                .get("x-document")
                .map(|v| v.as_bytes().to_vec())
        })
        .build()
        .layer(inner);
    let doc = |id: &str, body: &'static str| {
        Request::post("/")
            .header("x-document", id)
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    };
    fetch(&service, doc("42", "one")).await;
    fetch(&service, doc("42", "two")).await;
    assert_eq!(calls.get(), 2);
    let no_key = fetch(&service, post("/", "one")).await;
    assert_eq!(no_key.cache_status(), "tower-idempotency; fwd=bypass");
}
