//! Upstream servers on loopback that count their calls and embed the
//! request in their answer.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    body::Body,
    extract::{DefaultBodyLimit, Request, State},
    response::{IntoResponse, Response},
    Router,
};
use http::{HeaderMap, Method};
use http_body_util::BodyExt;
use serde_json::{json, Map, Value};
use tokio::{net::TcpListener, sync::Semaphore, task::JoinHandle};

use crate::{harness::sha256_hex, support::Calls};

/// A request as an upstream received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: Method,
    /// Path and query.
    pub target: String,
    pub headers: HeaderMap,
    pub body_len: usize,
    pub body_sha256: String,
}

/// An HTTP server on `127.0.0.1`, stopped on drop.
pub struct Upstream {
    pub addr: SocketAddr,
    pub calls: Calls,
    received: Arc<Mutex<Vec<Received>>>,
    task: JoinHandle<()>,
}

#[derive(Clone)]
struct Echo {
    calls: Calls,
    received: Arc<Mutex<Vec<Received>>>,
    gate: Option<Arc<Semaphore>>,
}

impl Upstream {
    /// Serves `router`, counting nothing itself.
    pub async fn serve(router: Router, calls: Calls) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        Upstream {
            addr,
            calls,
            received: Arc::default(),
            task,
        }
    }

    /// Answers every request with JSON describing it: its call number,
    /// method, path and query, headers, and the length and SHA-256 of its
    /// body. Two calls never answer alike.
    pub async fn echo() -> Upstream {
        Self::echo_with(None).await
    }

    /// Like [`echo`](Self::echo), but each call waits for a permit of `gate`
    /// (after it is counted) before it answers.
    pub async fn echo_gated(gate: Arc<Semaphore>) -> Upstream {
        Self::echo_with(Some(gate)).await
    }

    async fn echo_with(gate: Option<Arc<Semaphore>>) -> Upstream {
        let state = Echo {
            calls: Calls::default(),
            received: Arc::default(),
            gate,
        };
        let router = Router::new()
            .fallback(echo)
            .with_state(state.clone())
            .layer(DefaultBodyLimit::disable());
        let mut upstream = Self::serve(router, state.calls).await;
        upstream.received = state.received;
        upstream
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What the echo upstream received, in order.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn echo(State(state): State<Echo>, request: Request) -> Response {
    let call = state.calls.inc();
    let (head, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .expect("read the request body")
        .to_bytes();
    let received = Received {
        method: head.method.clone(),
        target: head
            .uri
            .path_and_query()
            .map(|pq| pq.as_str().to_owned())
            .unwrap_or_default(),
        headers: head.headers.clone(),
        body_len: body.len(),
        body_sha256: sha256_hex(&body),
    };
    state.received.lock().unwrap().push(received.clone());
    if let Some(gate) = &state.gate {
        gate.acquire().await.expect("the gate stays open").forget();
    }
    let mut headers = Map::new();
    for (name, value) in &received.headers {
        headers.insert(
            name.as_str().to_owned(),
            Value::String(String::from_utf8_lossy(value.as_bytes()).into_owned()),
        );
    }
    let answer = json!({
        "call": call,
        "method": received.method.as_str(),
        "target": received.target,
        "headers": headers,
        "body_len": received.body_len,
        "body_sha256": received.body_sha256,
    });
    (
        [("content-type", "application/json")],
        Body::from(answer.to_string()),
    )
        .into_response()
}
