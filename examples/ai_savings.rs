//! What did it save me? The seed's dashboard endpoint, answered by the crate.
//!
//! Starts a mock OpenAI-style API that reports token `usage`, puts an axum
//! app with `IdempotencyLayer` (and a price table) in front, sends a burst of
//! repeated and concurrent prompts, then serves:
//!
//! - `GET /metrics/idempotency`: hit rate, calls, tokens and dollars saved, as
//!   JSON (the seed's dashboard endpoint);
//! - `GET /metrics`: the same counters in Prometheus text, through the
//!   `metrics` facade and `metrics-exporter-prometheus`.
//!
//! ```text
//! cargo run --example ai_savings --features metrics            # print both and exit
//! cargo run --example ai_savings --features metrics -- --serve # keep serving on 127.0.0.1:9100
//! ```

use std::{net::SocketAddr, time::Duration};

use axum::{
    extract::State,
    response::IntoResponse,
    routing::{get, post},
    Json, Router,
};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::{json, Value};
use tower_idempotency::{ai::PriceTable, IdempotencyLayer};

#[derive(Parser)]
struct Args {
    /// Keep serving the endpoints after the demo burst.
    #[arg(long)]
    serve: bool,
    /// Where to serve them.
    #[arg(long, default_value = "127.0.0.1:9100")]
    listen: SocketAddr,
}

#[derive(Clone)]
struct Dashboard {
    layer: IdempotencyLayer,
    prometheus: PrometheusHandle,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let prometheus = PrometheusBuilder::new()
        .install_recorder()
        .expect("a metrics recorder");

    // Prices are yours to supply: dollars per million tokens, per model.
    let prices = PriceTable::new()
        .with_model("gpt-4o", 2.50, 10.00)
        .with_model("gpt-4o-mini", 0.15, 0.60);
    let layer = IdempotencyLayer::builder().prices(prices).build();

    let app = Router::new()
        .route("/v1/chat/completions", post(mock_openai))
        .layer(layer.clone());
    let app = serve(app, "127.0.0.1:0".parse().unwrap()).await;
    burst(app).await;

    let dashboard = Router::new()
        .route("/metrics/idempotency", get(idempotency_metrics))
        .route("/metrics", get(prometheus_text))
        .with_state(Dashboard { layer, prometheus });
    let listen = if args.serve {
        args.listen
    } else {
        "127.0.0.1:0".parse().unwrap()
    };
    let at = serve(dashboard, listen).await;

    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    for path in ["/metrics/idempotency", "/metrics"] {
        let response = client
            .get(format!("http://{at}{path}").parse().unwrap())
            .await
            .unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        println!(
            "GET {path}\n{}\n",
            String::from_utf8_lossy(&body).trim_end()
        );
    }
    if args.serve {
        println!("serving on http://{at} (Ctrl-C to stop)");
        tokio::signal::ctrl_c().await.unwrap();
    }
}

/// The seed's dashboard endpoint.
async fn idempotency_metrics(State(dashboard): State<Dashboard>) -> Json<Value> {
    let stats = dashboard.layer.stats();
    let answered = stats.hits.total() + stats.coalesced;
    Json(json!({
        "hit_rate_pct": (stats.hit_rate * 1000.0).round() / 10.0,
        "total_requests": stats.requests,
        "cache_hits": stats.hits.total(),
        "coalesced": stats.coalesced,
        "calls_saved": answered,
        "upstream_calls": stats.upstream_calls,
        "tokens_saved": stats.tokens_saved,
        "est_cost_saved_usd": stats.money_saved.dollars(),
        "stats": stats,
    }))
}

async fn prometheus_text(State(dashboard): State<Dashboard>) -> impl IntoResponse {
    dashboard.prometheus.render()
}

/// A mock OpenAI chat completion that reports its token usage.
async fn mock_openai(Json(request): Json<Value>) -> Json<Value> {
    tokio::time::sleep(Duration::from_millis(150)).await;
    let prompt = request["messages"][0]["content"]
        .as_str()
        .unwrap_or_default();
    let prompt_tokens = 20 + prompt.len() as u64 / 4;
    Json(json!({
        "id": "chatcmpl-demo",
        "object": "chat.completion",
        "model": request["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "A considered answer."}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 180, "total_tokens": prompt_tokens + 180}
    }))
}

/// Double-clicks, retries and a burst of identical prompts.
async fn burst(app: SocketAddr) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let send = |model: &'static str, prompt: String| {
        let client = client.clone();
        async move {
            let body = json!({"model": model, "temperature": 0, "messages": [{"role": "user", "content": prompt}]});
            let request = http::Request::post(format!("http://{app}/v1/chat/completions"))
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body.to_string())))
                .unwrap();
            client
                .request(request)
                .await
                .unwrap()
                .into_body()
                .collect()
                .await
                .unwrap();
        }
    };
    let mut tasks = Vec::new();
    for i in 0..20 {
        tasks.push(tokio::spawn(send(
            "gpt-4o",
            "Review this pull request diff".into(),
        )));
        tasks.push(tokio::spawn(send(
            "gpt-4o-mini",
            format!("Classify ticket {}", i % 4),
        )));
    }
    for task in tasks {
        task.await.unwrap();
    }
    for _ in 0..5 {
        send("gpt-4o", "Review this pull request diff".into()).await;
    }
}

async fn serve(app: Router, at: SocketAddr) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind(at).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}
