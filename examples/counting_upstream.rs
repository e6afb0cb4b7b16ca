//! An upstream for load runs: answers every request with a chat-completions
//! style JSON body, and counts its calls and the distinct request bodies it
//! saw.
//!
//! It prints `listening on ADDR` once it accepts connections. `GET /_count`
//! answers `{"calls":N,"unique":M}`: requests answered so far (`/_count`
//! itself aside), and how many of their bodies were distinct (by SHA-256).
//! Put the gateway in front of it and compare the count with what the load
//! generator sent: a fleet that shares its cache and its single flight calls
//! it once per distinct body.
//!
//! ```text
//! cargo run --release --example counting_upstream -- --listen 127.0.0.1:9000 --latency-ms 20
//! ```

use std::{
    collections::HashSet,
    io::Write,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::Duration,
};

use axum::{
    body::Bytes, extract::State, http::header, response::IntoResponse, routing::get, Json, Router,
};
use clap::Parser;
use serde_json::json;
use sha2::{Digest, Sha256};

#[derive(Parser, Debug)]
#[command(about = "An upstream that counts its calls and the distinct bodies it saw")]
struct Args {
    /// Address to listen on; port 0 picks a free port (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Milliseconds to wait before answering each request.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Approximate size of each answer in bytes.
    #[arg(long, default_value_t = 1024)]
    body_bytes: usize,
}

#[derive(Default)]
struct Counts {
    calls: AtomicU64,
    bodies: Mutex<HashSet<[u8; 32]>>,
}

#[derive(Clone)]
struct Upstream {
    counts: Arc<Counts>,
    latency: Duration,
    answer: Bytes,
}

/// A chat completion whose content pads the answer to about `bytes`.
fn answer(bytes: usize) -> Bytes {
    let mut value = json!({
        "id": "chatcmpl-load",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "gpt-4o-mini",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": ""},
            "finish_reason": "stop"
        }],
        "usage": {"prompt_tokens": 40, "completion_tokens": 200, "total_tokens": 240}
    });
    let overhead = value.to_string().len();
    value["choices"][0]["message"]["content"] = "x".repeat(bytes.saturating_sub(overhead)).into();
    Bytes::from(value.to_string())
}

async fn answer_request(State(upstream): State<Upstream>, body: Bytes) -> impl IntoResponse {
    upstream.counts.calls.fetch_add(1, Relaxed);
    let digest: [u8; 32] = Sha256::digest(&body).into();
    upstream
        .counts
        .bodies
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(digest);
    if !upstream.latency.is_zero() {
        tokio::time::sleep(upstream.latency).await;
    }
    (
        [(header::CONTENT_TYPE, "application/json")],
        upstream.answer.clone(),
    )
}

async fn count(State(upstream): State<Upstream>) -> impl IntoResponse {
    let unique = upstream
        .counts
        .bodies
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .len();
    Json(json!({
        "calls": upstream.counts.calls.load(Relaxed),
        "unique": unique,
    }))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let upstream = Upstream {
        counts: Arc::default(),
        latency: Duration::from_millis(args.latency_ms),
        answer: answer(args.body_bytes),
    };
    let app = Router::new()
        .route("/_count", get(count))
        .fallback(answer_request)
        .with_state(upstream);
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening on {}", listener.local_addr()?)?;
    stdout.flush()?;
    axum::serve(listener, app).await
}
