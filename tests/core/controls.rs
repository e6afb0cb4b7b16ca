//! Per-request control headers: what each does, and that none reaches the
//! upstream.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use tower::Layer;
use tower_idempotency::{ErrorKind, IdempotencyLayer};

use crate::support::*;

fn with(headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut request = Request::post("/v1/chat");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request
        .body(Full::new(Bytes::from_static(b"prompt")))
        .unwrap()
}

/// An upstream that fails the test if a control header reaches it.
fn guarded() -> (impl TestService, Calls) {
    upstream(|seen: Seen| async move {
        let leaked: Vec<_> = seen
            .head
            .headers
            .keys()
            .filter(|name| name.as_str().starts_with("x-idempotency-"))
            .collect();
        assert!(
            leaked.is_empty(),
            "control headers reached the upstream: {leaked:?}"
        );
        respond(200, format!("answer #{}", seen.call))
    })
}

fn layer() -> IdempotencyLayer {
    IdempotencyLayer::builder().control_headers(true).build()
}

#[tokio::test]
async fn bypass_passes_through_untouched() {
    let (inner, calls) = guarded();
    let service = layer().layer(inner);
    fetch(&service, with(&[])).await;
    let bypassed = fetch(&service, with(&[("x-idempotency-bypass", "true")])).await;
    assert_eq!(
        (&bypassed.body[..], bypassed.cache_status()),
        (&b"answer #2"[..], "tower-idempotency; fwd=bypass")
    );
    assert_eq!(
        &fetch(&service, with(&[])).await.body[..],
        b"answer #1",
        "the stored entry is untouched"
    );
    assert_eq!(calls.get(), 2);
}

#[tokio::test]
async fn refresh_replaces_the_stored_answer() {
    let (inner, calls) = guarded();
    let service = layer().layer(inner);
    fetch(&service, with(&[])).await;
    let fresh = fetch(&service, with(&[("x-idempotency-refresh", "true")])).await;
    assert_eq!(
        fresh.cache_status(),
        "tower-idempotency; fwd=request; stored"
    );
    assert_eq!(&fetch(&service, with(&[])).await.body[..], b"answer #2");
    assert_eq!(calls.get(), 2);
}

#[tokio::test]
async fn ttl_sets_how_long_this_answer_lives() {
    let (inner, calls) = guarded();
    let service = layer().layer(inner);
    let first = fetch(&service, with(&[("x-idempotency-ttl", "1")])).await;
    assert_eq!(&first.body[..], b"answer #1");
    let replay = fetch(&service, with(&[])).await;
    let ttl: u64 = replay
        .cache_status()
        .strip_prefix("tower-idempotency; hit; ttl=")
        .unwrap()
        .parse()
        .unwrap();
    assert!(ttl <= 1, "one second, not the default hour: ttl={ttl}");
    // Expiry runs on the real clock (L1 and the record's own expiry time).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(&fetch(&service, with(&[])).await.body[..], b"answer #2");
    assert_eq!(calls.get(), 2);
}

#[tokio::test]
async fn namespace_separates_this_request_from_the_default() {
    let (inner, calls) = guarded();
    let service = layer().layer(inner);
    fetch(&service, with(&[])).await;
    let other = fetch(&service, with(&[("x-idempotency-namespace", "model-v2")])).await;
    assert_eq!(&other.body[..], b"answer #2");
    assert_eq!(
        &fetch(&service, with(&[("x-idempotency-namespace", "model-v2")]))
            .await
            .body[..],
        b"answer #2"
    );
    assert_eq!(calls.get(), 2);
}

#[tokio::test]
async fn invalid_control_values_are_answered_400() {
    let (inner, calls) = guarded();
    let service = layer().layer(inner);
    for (name, value) in [
        ("x-idempotency-ttl", "soon"),
        ("x-idempotency-bypass", "maybe"),
        ("x-idempotency-refresh", "yes please"),
    ] {
        let response = tower::ServiceExt::oneshot(service.clone(), with(&[(name, value)]))
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{name}: {value}");
        assert_eq!(
            response
                .extensions()
                .get::<tower_idempotency::Error>()
                .unwrap()
                .kind(),
            ErrorKind::InvalidControl
        );
        let answer = Answer::read(response).await;
        assert_eq!(
            answer.header("content-type"),
            Some("application/problem+json")
        );
        assert!(String::from_utf8_lossy(&answer.body).contains(name));
    }
    assert_eq!(calls.get(), 0);
}

#[tokio::test]
async fn without_the_option_control_headers_are_ordinary_headers() {
    let (inner, calls) = upstream(|seen: Seen| async move {
        respond(
            200,
            format!(
                "saw bypass={:?}",
                seen.head.headers.get("x-idempotency-bypass")
            ),
        )
    });
    let service = IdempotencyLayer::new().layer(inner);
    fetch(&service, with(&[("x-idempotency-bypass", "true")])).await;
    let again = fetch(&service, with(&[("x-idempotency-bypass", "true")])).await;
    assert!(String::from_utf8_lossy(&again.body).contains("\"true\""));
    assert_eq!(calls.get(), 1);
}

#[tokio::test]
async fn a_ttl_is_digits_only() {
    let (inner, calls) = guarded();
    let service = layer().layer(inner);
    for value in ["+5", "-5", "5s", "0x10", "1e3", ""] {
        let response =
            tower::ServiceExt::oneshot(service.clone(), with(&[("x-idempotency-ttl", value)]))
                .await
                .unwrap();
        assert_eq!(response.status(), 400, "x-idempotency-ttl: {value:?}");
    }
    assert_eq!(calls.get(), 0);
}

#[tokio::test]
async fn explain_names_what_went_into_the_key_and_no_value() {
    let (inner, calls) = guarded();
    let layer = layer();
    let service = layer.layer(inner);
    let request = |explain: bool| {
        let mut request = Request::post("https://api.example.com/v1/chat?stream=true")
            .header("authorization", "Bearer sk-tenant-secret")
            .header("content-type", "application/json");
        if explain {
            request = request.header("x-idempotency-explain", "true");
        }
        request
            .body(Full::new(Bytes::from_static(br#"{"model":"m","n":1}"#)))
            .unwrap()
    };
    let (head, _) = request(false).into_parts();
    let key = layer.key_for(&head, br#"{"model":"m","n":1}"#).unwrap();

    let miss = fetch(&service, request(true)).await;
    let explained = miss.header("x-idempotency-explain").unwrap().to_owned();
    assert_eq!(
        explained,
        format!(
            "method=POST; authority=api.example.com; path=/v1/chat; query=stream; \
             headers=authorization,content-type; body=canonical-json; body-bytes=19; \
             namespace=; key={key}"
        )
    );
    assert!(!explained.contains("secret"));

    // A hit is explained alike; a request that does not ask gets nothing.
    let hit = fetch(&service, request(true)).await;
    assert!(
        hit.cache_status().contains("; hit"),
        "{}",
        hit.cache_status()
    );
    assert_eq!(hit.header("x-idempotency-explain"), Some(&explained[..]));
    let plain = fetch(&service, request(false)).await;
    assert_eq!(plain.header("x-idempotency-explain"), None);
    assert_eq!(calls.get(), 1);
}

#[tokio::test]
async fn explain_is_an_ordinary_header_without_the_option() {
    let (inner, _calls) = upstream(|_: Seen| async move { respond(200, "answer") });
    let service = IdempotencyLayer::new().layer(inner);
    let answer = fetch(&service, with(&[("x-idempotency-explain", "true")])).await;
    assert_eq!(answer.header("x-idempotency-explain"), None);
}
