//! What is shared and replayed is only what may be: private answers, `Vary`,
//! and a `stored` that is true.

use std::{sync::Arc, time::Duration};

use axum::{routing, Router};
use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use tokio::{net::TcpListener, time::timeout};
use tower::Layer;
use tower_idempotency::IdempotencyLayer;

use crate::support::*;

const PATIENCE: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn private_answers_are_never_shared_with_concurrent_duplicates() {
    let calls = Calls::default();
    let counter = calls.clone();
    let app = Router::new()
        .route(
            "/v1/me",
            routing::post(move |headers: HeaderMap| {
                counter.inc();
                async move {
                    // Slow, so that the four requests overlap.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let user = headers["x-user"].to_str().unwrap().to_owned();
                    Response::builder()
                        .header("cache-control", "private")
                        .body(axum::body::Body::from(format!("secrets of user {user}")))
                        .unwrap()
                }
            }),
        )
        .layer(IdempotencyLayer::new());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();

    let tasks: Vec<_> = (0..4)
        .map(|user| {
            let request = Request::post(format!("{base}/v1/me"))
                .header("x-user", user.to_string())
                .body(Full::new(Bytes::from_static(b"same")))
                .unwrap();
            let client = client.clone();
            tokio::spawn(async move {
                let response = client.request(request).await.unwrap();
                let body = response.into_body().collect().await.unwrap().to_bytes();
                (user, body)
            })
        })
        .collect();
    for task in tasks {
        let (user, body) = timeout(PATIENCE, task).await.unwrap().unwrap();
        assert_eq!(body, format!("secrets of user {user}"));
    }
    assert_eq!(calls.get(), 4);
}

#[tokio::test(start_paused = true)]
async fn no_store_answers_are_never_shared_with_a_follower() {
    let (inner, calls, gate) = gated(|seen| {
        Response::builder()
            .header("cache-control", "no-store")
            .body(full(format!("answer #{}", seen.call)))
            .unwrap()
    });
    let service = IdempotencyLayer::new().layer(inner);
    let leader = tokio::spawn({
        let service = service.clone();
        async move { fetch(&service, post("/", "q")).await }
    });
    assert!(eventually(PATIENCE, || calls.get() == 1).await);
    let follower = tokio::spawn({
        let service = service.clone();
        async move { fetch(&service, post("/", "q")).await }
    });
    // The follower joins the leader's flight.
    settle().await;
    gate.notify_one();
    let leader = timeout(PATIENCE, leader).await.unwrap().unwrap();
    let follower = timeout(PATIENCE, follower).await.unwrap().unwrap();
    assert_eq!(&leader.body[..], b"answer #1");
    assert_eq!(&follower.body[..], b"answer #2");
    assert_eq!(calls.get(), 2);
}

/// An upstream that answers with the request's `origin` and `Vary: Origin`
/// (as a CORS layer does), naming its call.
fn cors() -> (impl TestService, Calls) {
    upstream(|seen: Seen| async move {
        let origin = seen
            .head
            .headers
            .get("origin")
            .map_or("none", |v| v.to_str().unwrap())
            .to_owned();
        Response::builder()
            .header("vary", "Accept-Encoding")
            .header("vary", "ORIGIN, x-unused")
            .body(full(format!("for {origin} #{}", seen.call)))
            .unwrap()
    })
}

fn from(origin: &'static str) -> Request<Full<Bytes>> {
    let mut request = post("/v1/data", "q");
    request
        .headers_mut()
        .insert("origin", http::HeaderValue::from_static(origin));
    request
}

#[tokio::test]
async fn a_response_varying_on_a_header_outside_the_key_is_replayed_only_to_its_value() {
    let (inner, calls) = cors();
    let service = IdempotencyLayer::new().layer(inner);
    let a = fetch(&service, from("https://a.example")).await;
    assert_eq!(&a.body[..], b"for https://a.example #1");
    assert!(a.cache_status().ends_with("stored"), "{}", a.cache_status());
    let a_again = fetch(&service, from("https://a.example")).await;
    assert!(a_again.cache_status().contains("hit"));
    assert_eq!(a_again.body, a.body);

    let b = fetch(&service, from("https://b.example")).await;
    assert_eq!(&b.body[..], b"for https://b.example #2");
    // The fresh answer replaced the entry.
    let b_again = fetch(&service, from("https://b.example")).await;
    assert_eq!(b_again.body, b.body);
    assert!(b_again.cache_status().contains("hit"));
    let a_later = fetch(&service, from("https://a.example")).await;
    assert_eq!(&a_later.body[..], b"for https://a.example #3");
    assert_eq!(calls.get(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_follower_with_another_value_of_a_vary_header_goes_through_itself() {
    let (inner, calls, gate) = gated(|seen| {
        let origin = seen.head.headers["origin"].to_str().unwrap().to_owned();
        Response::builder()
            .header("vary", "origin")
            .body(full(format!("for {origin}")))
            .unwrap()
    });
    let layer = IdempotencyLayer::new();
    let service = layer.layer(inner);
    let leader = tokio::spawn({
        let service = service.clone();
        async move { fetch(&service, from("https://a.example")).await }
    });
    assert!(eventually(PATIENCE, || calls.get() == 1).await);
    let same = tokio::spawn({
        let service = service.clone();
        async move { fetch(&service, from("https://a.example")).await }
    });
    let other = tokio::spawn({
        let service = service.clone();
        async move { fetch(&service, from("https://b.example")).await }
    });
    assert!(eventually(PATIENCE, || layer.stats().requests == 3).await);
    // The follower joins the leader's flight.
    settle().await;
    gate.notify_one();
    let leader = timeout(PATIENCE, leader).await.unwrap().unwrap();
    let same = timeout(PATIENCE, same).await.unwrap().unwrap();
    let other = timeout(PATIENCE, other).await.unwrap().unwrap();
    assert_eq!(&leader.body[..], b"for https://a.example");
    assert_eq!(&same.body[..], b"for https://a.example");
    assert!(same.cache_status().ends_with("collapsed"));
    assert_eq!(&other.body[..], b"for https://b.example");
    assert_eq!(calls.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn vary_star_is_never_stored_nor_shared() {
    let (inner, calls, gate) = gated(|seen| {
        Response::builder()
            .header("vary", "*")
            .body(full(format!("answer #{}", seen.call)))
            .unwrap()
    });
    let service = IdempotencyLayer::new().layer(inner);
    let leader = tokio::spawn({
        let service = service.clone();
        async move { fetch(&service, post("/", "q")).await }
    });
    assert!(eventually(PATIENCE, || calls.get() == 1).await);
    let follower = tokio::spawn({
        let service = service.clone();
        async move { fetch(&service, post("/", "q")).await }
    });
    // The follower joins the leader's flight.
    settle().await;
    gate.notify_one();
    let leader = timeout(PATIENCE, leader).await.unwrap().unwrap();
    let follower = timeout(PATIENCE, follower).await.unwrap().unwrap();
    assert_eq!(leader.cache_status(), "tower-idempotency; fwd=uri-miss");
    assert_eq!(&follower.body[..], b"answer #2");
    let later = fetch(&service, post("/", "q")).await;
    assert_eq!(&later.body[..], b"answer #3");
}

#[tokio::test]
async fn vary_on_headers_in_the_key_is_stored_as_usual() {
    let (inner, calls) = upstream(|seen: Seen| async move {
        Response::builder()
            .header("vary", "Accept-Encoding, Authorization")
            .body(full(format!("answer #{}", seen.call)))
            .unwrap()
    });
    let service = IdempotencyLayer::new().layer(inner);
    fetch(&service, post("/", "q")).await;
    let again = fetch(&service, post("/", "q")).await;
    assert!(again.cache_status().contains("hit"));
    assert_eq!(calls.get(), 1);
}

#[tokio::test]
async fn stored_is_not_promised_for_a_streamed_answer_over_the_limit() {
    let (feed, body) = channel_body();
    let body = Arc::new(std::sync::Mutex::new(Some(body)));
    let (inner, calls) = upstream(move |_seen: Seen| {
        let body = body.lock().unwrap().take();
        async move {
            match body {
                Some(body) => Response::new(body.boxed()),
                None => respond(200, "later"),
            }
        }
    });
    let layer = IdempotencyLayer::builder().max_response_body(10).build();
    let service = layer.layer(inner);
    feed.data("0123456789");
    feed.data("abcdef");
    drop(feed);
    let answer = fetch(&service, post("/", "q")).await;
    assert_eq!(&answer.body[..], b"0123456789abcdef");
    assert_eq!(answer.cache_status(), "tower-idempotency; fwd=uri-miss");
    assert_eq!(layer.stats().stored, 0);
    let again = fetch(&service, post("/", "q")).await;
    assert_eq!(&again.body[..], b"later");
    assert_eq!(calls.get(), 2);
}

#[tokio::test]
async fn an_answer_of_unknown_length_within_the_limit_is_stored_without_the_promise() {
    let (feed, body) = channel_body();
    let body = Arc::new(std::sync::Mutex::new(Some(body)));
    let (inner, calls) = upstream(move |_seen: Seen| {
        let body = body.lock().unwrap().take().expect("one call");
        async move { Response::new(body.boxed()) }
    });
    let layer = IdempotencyLayer::new();
    let service = layer.layer(inner);
    feed.data("streamed");
    drop(feed);
    let answer = fetch(&service, post("/", "q")).await;
    assert_eq!(answer.cache_status(), "tower-idempotency; fwd=uri-miss");
    let again = fetch(&service, post("/", "q")).await;
    assert!(again.cache_status().contains("hit"));
    assert_eq!(&again.body[..], b"streamed");
    assert_eq!(calls.get(), 1);
}

#[tokio::test]
async fn stored_is_not_promised_when_the_ttl_is_zero() {
    let (inner, _) = numbered();
    let service = IdempotencyLayer::builder()
        .ttl(Duration::ZERO)
        .build()
        .layer(inner);
    let answer = fetch(&service, post("/", "q")).await;
    assert_eq!(answer.cache_status(), "tower-idempotency; fwd=uri-miss");
}
