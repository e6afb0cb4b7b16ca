//! What the layer saves on a realistic burst against a paid AI API.
//!
//! Starts a mock AI API on loopback (it bills every call and takes 300 ms),
//! puts an axum app in front of it with `IdempotencyLayer`, then sends what
//! real traffic sends: double-clicks, retries, 50 concurrent identical
//! prompts, and distinct prompts. Prints what reached the paid API.
//!
//! ```text
//! cargo run --example quickstart
//! ```

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use axum::{extract::State, http::HeaderMap, routing::post, Json, Router};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tower_idempotency::IdempotencyLayer;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// What one call to the mock API costs.
const PRICE_PER_CALL: f64 = 0.03;
const API_LATENCY: Duration = Duration::from_millis(300);

#[tokio::main]
async fn main() {
    let billed = Arc::new(AtomicU64::new(0));
    let api = serve(mock_ai_api(Arc::clone(&billed))).await;

    let layer = IdempotencyLayer::new();
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let app = Router::new()
        .route("/chat", post(ask_the_api))
        .with_state((client.clone(), api))
        .layer(layer.clone());
    let app = serve(app).await;

    let mut latencies = Latencies::default();
    let mut sent = 0;

    // Double-clicks: the same prompt twice, 50 ms apart.
    for user in 0..5 {
        let prompt = format!("Describe product photo #{user}");
        let first = tokio::spawn(send(client.clone(), app, prompt.clone()));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let second = send(client.clone(), app, prompt).await;
        latencies.record(first.await.unwrap());
        latencies.record(second);
        sent += 2;
    }

    // Retries: a client that gave up re-sends the same request later.
    for _ in 0..3 {
        latencies.record(send(client.clone(), app, "Describe product photo #0".into()).await);
        sent += 1;
    }

    // A burst: 50 users upload the same stock photo at once.
    let burst: Vec<_> = (0..50)
        .map(|_| {
            tokio::spawn(send(
                client.clone(),
                app,
                "Describe stock photo: red sneaker".into(),
            ))
        })
        .collect();
    for call in burst {
        latencies.record(call.await.unwrap());
        sent += 1;
    }

    // Distinct prompts: these must all reach the API.
    for i in 0..10 {
        latencies.record(send(client.clone(), app, format!("Summarise ticket {i}")).await);
        sent += 1;
    }

    let calls = billed.load(Ordering::SeqCst);
    let stats = layer.stats();
    println!();
    println!("  tower-idempotency quickstart: a burst against a mock AI API ({}ms, ${PRICE_PER_CALL:.2}/call)", API_LATENCY.as_millis());
    println!("  ------------------------------------------------------------------");
    println!("  {:<34} {:>10}", "requests sent", sent);
    println!("  {:<34} {:>10}", "upstream (paid) calls made", calls);
    println!("  {:<34} {:>10}", "calls saved", sent - calls);
    println!(
        "  {:<34} {:>9.1}%",
        "hit rate (hits + coalesced)",
        100.0 * (sent - calls) as f64 / sent as f64
    );
    println!(
        "  {:<34} {:>10}",
        "  of which replayed from cache",
        stats.hits.total()
    );
    println!(
        "  {:<34} {:>10}",
        "  of which coalesced in flight", stats.coalesced
    );
    println!(
        "  {:<34} {:>10}",
        "money without the layer",
        format!("${:.2}", sent as f64 * PRICE_PER_CALL)
    );
    println!(
        "  {:<34} {:>10}",
        "money with the layer",
        format!("${:.2}", calls as f64 * PRICE_PER_CALL)
    );
    println!(
        "  {:<34} {:>10}",
        "median latency, upstream call",
        format_ms(latencies.median("miss"))
    );
    println!(
        "  {:<34} {:>10}",
        "median latency, coalesced",
        format_ms(latencies.median("collapsed"))
    );
    println!(
        "  {:<34} {:>10}",
        "median latency, cache hit",
        format_ms(latencies.median("hit"))
    );
    println!();
}

/// The app: forwards the prompt to the paid API.
async fn ask_the_api(
    State((client, api)): State<(HttpClient, SocketAddr)>,
    body: Bytes,
) -> (HeaderMap, Bytes) {
    let request = Request::post(format!("http://{api}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(Full::new(body))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("content-type", "application/json".parse().unwrap());
    (
        headers,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
}

/// A mock OpenAI-style API that bills every call.
fn mock_ai_api(billed: Arc<AtomicU64>) -> Router {
    Router::new().route(
        "/v1/chat/completions",
        post(move |Json(request): Json<Value>| {
            let call = billed.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                tokio::time::sleep(API_LATENCY).await;
                let prompt = request["messages"][0]["content"].as_str().unwrap_or_default().to_owned();
                Json(json!({
                    "id": format!("chatcmpl-{call}"),
                    "object": "chat.completion",
                    "model": request["model"],
                    "choices": [{
                        "index": 0,
                        "message": {"role": "assistant", "content": format!("A considered answer to: {prompt}")},
                        "finish_reason": "stop"
                    }],
                    "usage": {"prompt_tokens": 12 + prompt.len() / 4, "completion_tokens": 48, "total_tokens": 60 + prompt.len() / 4}
                }))
            }
        }),
    )
}

async fn send(client: HttpClient, app: SocketAddr, prompt: String) -> (String, Duration) {
    let body = json!({
        "model": "gpt-4o-mini",
        "temperature": 0,
        "messages": [{"role": "user", "content": prompt}],
    });
    let request = Request::post(format!("http://{app}/chat"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let started = Instant::now();
    let response = client.request(request).await.unwrap();
    let status = response
        .headers()
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    response.into_body().collect().await.unwrap();
    (status, started.elapsed())
}

async fn serve(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

#[derive(Default)]
struct Latencies {
    by_outcome: Vec<(&'static str, Duration)>,
}

impl Latencies {
    fn record(&mut self, (status, elapsed): (String, Duration)) {
        let outcome = if status.contains("; hit") {
            "hit"
        } else if status.ends_with("collapsed") {
            "collapsed"
        } else {
            "miss"
        };
        self.by_outcome.push((outcome, elapsed));
    }

    fn median(&self, outcome: &str) -> Option<Duration> {
        let mut times: Vec<Duration> = self
            .by_outcome
            .iter()
            .filter(|(o, _)| *o == outcome)
            .map(|(_, d)| *d)
            .collect();
        times.sort();
        times.get(times.len() / 2).copied()
    }
}

fn format_ms(duration: Option<Duration>) -> String {
    duration.map_or_else(
        || "-".into(),
        |d| format!("{:.2} ms", d.as_secs_f64() * 1000.0),
    )
}
