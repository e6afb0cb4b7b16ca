//! The layer in an axum server, over real HTTP on loopback.

use std::{
    convert::Infallible,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use axum::{
    body::Body,
    response::{sse::Event, Sse},
    routing::post,
    Router,
};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use tokio::net::TcpListener;
use tower_idempotency::IdempotencyLayer;

async fn serve(app: Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_server_answers_concurrent_duplicates_with_one_handler_call() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let app = Router::new()
        .route(
            "/v1/chat/completions",
            post(move |body: String| {
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                async move {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    format!("{{\"echo\":{},\"call\":{n}}}", body.len())
                }
            }),
        )
        .layer(IdempotencyLayer::new());
    let base = serve(app).await;
    let client = client();
    let send = || {
        let request = Request::post(format!("{base}/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(
                br#"{"messages":[{"role":"user","content":"hi"}]}"#,
            )))
            .unwrap();
        let client = client.clone();
        async move {
            let response = client.request(request).await.unwrap();
            let status = response.headers()["cache-status"]
                .to_str()
                .unwrap()
                .to_owned();
            (
                status,
                response.into_body().collect().await.unwrap().to_bytes(),
            )
        }
    };
    let answers = futures_join_all((0..20).map(|_| tokio::spawn(send()))).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(answers.iter().all(|(_, body)| body == &answers[0].1));
    assert_eq!(
        answers
            .iter()
            .filter(|(s, _)| s.ends_with("collapsed"))
            .count(),
        19
    );

    let (status, body) = send().await;
    assert!(status.starts_with("tower-idempotency; hit"));
    assert_eq!(body, answers[0].1);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_stream_through_before_the_upstream_finishes() {
    let app = Router::new()
        .route(
            "/v1/stream",
            post(|| async {
                let events = async_stream_events();
                Sse::new(events)
            }),
        )
        .layer(IdempotencyLayer::new());
    let base = serve(app).await;
    let started = Instant::now();
    let request = Request::post(format!("{base}/v1/stream"))
        .body(Full::new(Bytes::from_static(b"q")))
        .unwrap();
    let response = client().request(request).await.unwrap();
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    let first_at = started.elapsed();
    assert!(std::str::from_utf8(&first)
        .unwrap()
        .contains("data: token 0"));
    let mut rest = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            rest.extend_from_slice(&data);
        }
    }
    let done_at = started.elapsed();
    assert!(String::from_utf8(rest).unwrap().contains("data: token 4"));
    // The upstream pauses 100 ms between events: the first one must not wait
    // for the last.
    assert!(
        first_at + Duration::from_millis(300) < done_at,
        "first {first_at:?}, done {done_at:?}"
    );
}

fn async_stream_events() -> impl futures_core::Stream<Item = Result<Event, Infallible>> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        for i in 0..5 {
            if tx
                .send(Ok(Event::default().data(format!("token {i}"))))
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    ReceiverStream(rx)
}

struct ReceiverStream<T>(tokio::sync::mpsc::Receiver<T>);

impl<T> futures_core::Stream for ReceiverStream<T> {
    type Item = T;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<T>> {
        self.0.poll_recv(cx)
    }
}

async fn futures_join_all<T>(tasks: impl Iterator<Item = tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for task in tasks.collect::<Vec<_>>() {
        out.push(task.await.unwrap());
    }
    out
}

#[tokio::test]
async fn axum_body_errors_are_400() {
    // A body that fails midway, as a client that resets the connection would.
    let app = Router::new()
        .route("/", post(|| async { "never" }))
        .layer(IdempotencyLayer::new());
    let (feed, body) = crate::support::channel_body();
    feed.data("partial");
    feed.fail();
    let request = Request::post("/").body(Body::new(body)).unwrap();
    let response = tower::ServiceExt::oneshot(app, request).await.unwrap();
    assert_eq!(response.status(), 400);
}
