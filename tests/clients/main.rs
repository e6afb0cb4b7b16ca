//! Outbound: the same engine around a reqwest client (as a middleware) and a
//! hyper client (as a Tower layer), against a counting server on loopback.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::{routing::post, Router};
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue};
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use reqwest_middleware::ClientBuilder;
use tokio::net::TcpListener;
use tower::{Layer, ServiceExt};
use tower_idempotency::{IdempotencyLayer, IdempotencyMiddleware, RequestBody};

#[cfg(feature = "redis")]
#[path = "../support/redis_server.rs"]
mod redis_server;
#[cfg(feature = "redis")]
mod streams;

/// An AI-like API on loopback: answers after 150 ms, naming its call number.
async fn api() -> (String, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let app = Router::new().route(
        "/v1/chat/completions",
        post(move |body: Bytes| {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                tokio::time::sleep(Duration::from_millis(150)).await;
                format!("call {n}: {} bytes", body.len())
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/v1/chat/completions",
        listener.local_addr().unwrap()
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, calls)
}

const PROMPT: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reqwest_middleware_deduplicates_sequential_and_concurrent_calls() {
    let (url, calls) = api().await;
    let layer = IdempotencyLayer::new();
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(IdempotencyMiddleware::new(&layer).default_headers(HeaderMap::new()))
        .build();
    let send = || {
        let client = client.clone();
        let url = url.clone();
        async move {
            let response = client
                .post(&url)
                .header("content-type", "application/json")
                .body(PROMPT)
                .send()
                .await
                .unwrap();
            let status = response.headers()["cache-status"]
                .to_str()
                .unwrap()
                .to_owned();
            assert_eq!(response.url().as_str(), url, "the response keeps its URL");
            (status, response.text().await.unwrap())
        }
    };

    let (status, first) = send().await;
    assert_eq!(status, "tower-idempotency; fwd=uri-miss; stored");
    let (status, again) = send().await;
    assert!(status.starts_with("tower-idempotency; hit"), "{status}");
    assert_eq!(again, first);
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // Concurrent duplicates of a new prompt: one call.
    let burst: Vec<_> = (0..20)
        .map(|_| {
            let client = client.clone();
            let url = url.clone();
            tokio::spawn(async move {
                client
                    .post(&url)
                    .body("another prompt")
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut answers = Vec::new();
    for task in burst {
        answers.push(task.await.unwrap());
    }
    assert!(answers.iter().all(|a| a == &answers[0]));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(IdempotencyMiddleware::new(&layer).stats().coalesced, 19);
}

#[tokio::test]
async fn reqwest_streaming_bodies_pass_through_uncached() {
    let (url, calls) = api().await;
    let layer = IdempotencyLayer::new();
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(IdempotencyMiddleware::new(&layer).default_headers(HeaderMap::new()))
        .build();
    for _ in 0..2 {
        let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::from_static(b"streamed ")),
            Ok(Bytes::from_static(b"body")),
        ];
        let body = reqwest::Body::wrap_stream(StreamOf(chunks.into_iter()));
        let answer = client
            .post(&url)
            .body(body)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(answer.ends_with("13 bytes"), "{answer}");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "a stream cannot be fingerprinted, so it is never replayed"
    );
}

struct StreamOf<I>(I);

impl<I: Iterator + Unpin> futures_core::Stream for StreamOf<I> {
    type Item = I::Item;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<I::Item>> {
        std::task::Poll::Ready(self.0.next())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyper_client_wrapped_in_the_layer_deduplicates() {
    let (url, calls) = api().await;
    let client: Client<_, RequestBody<Full<Bytes>>> =
        Client::builder(TokioExecutor::new()).build_http();
    let service = IdempotencyLayer::new().layer(client);
    let send = || {
        let service = service.clone();
        let request = http::Request::post(url.as_str())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(PROMPT.as_bytes())))
            .unwrap();
        async move {
            let response = service.oneshot(request).await.unwrap();
            response.into_body().collect().await.unwrap().to_bytes()
        }
    };
    let burst: Vec<_> = (0..10).map(|_| tokio::spawn(send())).collect();
    let mut answers = Vec::new();
    for task in burst {
        answers.push(task.await.unwrap());
    }
    assert!(answers.iter().all(|a| a == &answers[0]));
    assert_eq!(send().await, answers[0]);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// An API on loopback that answers each tenant (its `authorization`) with
/// its own answer, naming the call number and every header it received.
async fn per_tenant_api() -> (String, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let app = Router::new().route(
        "/v1/chat/completions",
        post(move |headers: http::HeaderMap| {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                let tenant = headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("nobody")
                    .to_owned();
                let accept = headers
                    .get(header::ACCEPT)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                format!("call {n} for {tenant} accepting {accept}")
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/v1/chat/completions",
        listener.local_addr().unwrap()
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, calls)
}

fn tenant(name: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {name}")).unwrap(),
    );
    headers
}

async fn ask(client: &reqwest_middleware::ClientWithMiddleware, url: &str) -> String {
    client
        .post(url)
        .header("content-type", "application/json")
        .body(PROMPT)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn reqwest_clients_with_their_own_default_credentials_never_share_an_entry() {
    // Each client knows its tenant only through its default headers; the
    // middleware is not told them: it cannot know what is sent, so it must
    // not answer one tenant with the other's response.
    let (url, calls) = per_tenant_api().await;
    let layer = IdempotencyLayer::new();
    let client = |name: &str| {
        let inner = reqwest::Client::builder()
            .default_headers(tenant(name))
            .build()
            .unwrap();
        ClientBuilder::new(inner)
            .with(IdempotencyMiddleware::new(&layer))
            .build()
    };
    let (a, b) = (client("tenant-a"), client("tenant-b"));
    let answer_a = ask(&a, &url).await;
    let answer_b = ask(&b, &url).await;
    assert!(answer_a.contains("for Bearer tenant-a"), "{answer_a}");
    assert!(answer_b.contains("for Bearer tenant-b"), "{answer_b}");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(layer.stats().hits.total(), 0);
}

#[tokio::test]
async fn reqwest_clients_whose_default_headers_are_declared_are_keyed_with_them() {
    let (url, calls) = per_tenant_api().await;
    let layer = IdempotencyLayer::new();
    let client = |name: &str| {
        let inner = reqwest::Client::builder()
            .default_headers(tenant(name))
            .build()
            .unwrap();
        ClientBuilder::new(inner)
            .with(IdempotencyMiddleware::new(&layer).default_headers(tenant(name)))
            .build()
    };
    let (a, b) = (client("tenant-a"), client("tenant-b"));
    let answer_a = ask(&a, &url).await;
    let answer_b = ask(&b, &url).await;
    assert!(
        answer_a.contains("for Bearer tenant-a accepting */*"),
        "{answer_a}"
    );
    assert!(
        answer_b.contains("for Bearer tenant-b accepting */*"),
        "{answer_b}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // Each tenant's repeat is its own entry's replay.
    assert_eq!(ask(&a, &url).await, answer_a);
    assert_eq!(ask(&b, &url).await, answer_b);
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // A header the request sets itself wins over the default, as in reqwest.
    let other = a
        .post(&url)
        .header("content-type", "application/json")
        .header(header::AUTHORIZATION, "Bearer tenant-b")
        .body(PROMPT)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(other, answer_b, "the same request as tenant b's: its entry");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn reqwest_requests_that_set_every_vary_header_are_cached_without_declared_defaults() {
    let (url, calls) = per_tenant_api().await;
    let layer = IdempotencyLayer::builder()
        .vary_headers([header::AUTHORIZATION, header::ACCEPT])
        .build();
    let inner = reqwest::Client::builder()
        .default_headers(tenant("tenant-a"))
        .build()
        .unwrap();
    let client = ClientBuilder::new(inner)
        .with(IdempotencyMiddleware::new(&layer))
        .build();
    let send = |who: &'static str| {
        client
            .post(&url)
            .header(header::AUTHORIZATION, who)
            .header(header::ACCEPT, "application/json")
            .body(PROMPT)
            .send()
    };
    let first = send("Bearer tenant-c").await.unwrap().text().await.unwrap();
    let again = send("Bearer tenant-c").await.unwrap().text().await.unwrap();
    assert_eq!(first, again);
    assert!(first.contains("for Bearer tenant-c"), "{first}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // Missing one vary header: a default could fill it, so it is not cached.
    for _ in 0..2 {
        client
            .post(&url)
            .header(header::ACCEPT, "application/json")
            .body(PROMPT)
            .send()
            .await
            .unwrap();
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(layer.stats().bypassed.no_key, 2);
}
