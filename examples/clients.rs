//! Outbound protection: the same idempotency engine around a `reqwest`
//! client (as a middleware) and around a hyper client (as a Tower layer).
//!
//! ```text
//! cargo run --example clients
//! ```

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::{routing::post, Router};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use reqwest_middleware::ClientBuilder;
use tower::{ServiceBuilder, ServiceExt};
use tower_idempotency::{IdempotencyLayer, IdempotencyMiddleware, RequestBody};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let (url, calls) = paid_api().await;
    let prompt =
        r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Describe this photo"}]}"#;

    // reqwest: add the middleware to the client, and tell it the client's
    // default headers (none here) so that it keys requests as they are sent.
    let idempotency = IdempotencyLayer::new();
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(IdempotencyMiddleware::new(&idempotency).default_headers(Default::default()))
        .build();
    for attempt in 1..=3 {
        let response = client
            .post(&url)
            .header("content-type", "application/json")
            .body(prompt)
            .send()
            .await?;
        let status = response
            .headers()
            .get("cache-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        println!(
            "reqwest attempt {attempt}: {:<45} {}",
            status,
            response.text().await?
        );
    }

    // hyper: wrap the client service in the layer, like any Tower service.
    let hyper = Client::builder(TokioExecutor::new()).build_http::<RequestBody<Full<Bytes>>>();
    let service = ServiceBuilder::new()
        .layer(IdempotencyLayer::new())
        .service(hyper);
    for attempt in 1..=3 {
        let request = http::Request::post(url.as_str())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(prompt.as_bytes())))?;
        let response = service.clone().oneshot(request).await?;
        let status = response
            .headers()
            .get("cache-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let body = response.into_body().collect().await?.to_bytes();
        println!(
            "hyper   attempt {attempt}: {:<45} {}",
            status,
            String::from_utf8_lossy(&body)
        );
    }

    println!("\n6 requests, {} paid calls", calls.load(Ordering::SeqCst));
    Ok(())
}

/// A stand-in for a paid API on loopback.
async fn paid_api() -> (String, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let app = Router::new().route(
        "/v1/chat/completions",
        post(move || {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                format!("{{\"id\":\"call-{n}\",\"answer\":\"a red sneaker\"}}")
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/v1/chat/completions",
        listener.local_addr().unwrap()
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, calls)
}
