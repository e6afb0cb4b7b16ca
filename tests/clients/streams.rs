//! Live streams across instances behind the reqwest middleware: a remote
//! follower there cannot go through once it has answered (the rest of the
//! client's middleware chain was borrowed from a call that has returned),
//! so Redis failing mid-stream ends its body with an error, and never a
//! truncated body passed off as complete.

use std::{
    convert::Infallible,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{routing::post, Router};
use bytes::Bytes;
use http::HeaderMap;
use http_body::Frame;
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use tokio::{net::TcpListener, sync::mpsc, time::timeout};
use tower_idempotency::{IdempotencyLayer, IdempotencyMiddleware, RedisStore};

use crate::redis_server::RedisServer;

const PATIENCE: Duration = Duration::from_secs(10);

/// A body the test feeds.
struct Fed(mpsc::UnboundedReceiver<Bytes>);

impl http_body::Body for Fed {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

/// An API on loopback whose first call streams what the test feeds (as
/// server-sent events); later calls answer `fresh #<call>`.
async fn api() -> (String, Arc<AtomicUsize>, mpsc::UnboundedSender<Bytes>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let (feed, fed) = mpsc::unbounded_channel();
    let fed = Arc::new(Mutex::new(Some(Fed(fed))));
    let counter = Arc::clone(&calls);
    let app = Router::new().route(
        "/v1/chat",
        post(move || {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            let fed = fed.lock().unwrap().take();
            async move {
                let body = match fed {
                    Some(fed) => axum::body::Body::new(fed),
                    None => axum::body::Body::from(format!("fresh #{n}")),
                };
                ([("content-type", "text/event-stream")], body)
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/chat", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, calls, feed)
}

async fn instance(server: &RedisServer) -> ClientWithMiddleware {
    let redis = RedisStore::builder(server.url())
        .streams(true)
        .poll_interval(Duration::from_secs(5))
        .timeout(Duration::from_millis(500))
        .write_timeout(Duration::from_millis(200))
        .connect()
        .await
        .unwrap();
    let layer = IdempotencyLayer::builder().redis(redis).build();
    ClientBuilder::new(reqwest::Client::new())
        .with(IdempotencyMiddleware::new(&layer).default_headers(HeaderMap::new()))
        .build()
}

async fn chunk(response: &mut reqwest::Response) -> Result<Option<Bytes>, reqwest::Error> {
    timeout(PATIENCE, response.chunk())
        .await
        .expect("a chunk in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_stream_ends_a_reqwest_remote_followers_body_with_an_error() {
    let server = RedisServer::start();
    let (url, calls, feed) = api().await;
    let (a, b) = (instance(&server).await, instance(&server).await);
    let send = |client: &ClientWithMiddleware| {
        let request = client.post(&url).body("stream me").send();
        async move { timeout(PATIENCE, request).await.unwrap().unwrap() }
    };
    let mut leader = send(&a).await;
    feed.send(Bytes::from("data: 1\n\n")).unwrap();
    let mut follower = send(&b).await;
    assert_eq!(
        follower.headers()["cache-status"],
        "tower-idempotency; fwd=uri-miss; collapsed"
    );
    assert_eq!(chunk(&mut follower).await.unwrap().unwrap(), "data: 1\n\n");

    server.kill();
    let killed = Instant::now();
    let mut rest = Vec::new();
    let ended = loop {
        match chunk(&mut follower).await {
            Ok(Some(bytes)) => rest.extend_from_slice(&bytes),
            ended => break ended,
        }
    };
    assert!(ended.is_err(), "a truncated body passed off as complete");
    assert!(rest.is_empty(), "{rest:?}");
    assert!(killed.elapsed() < Duration::from_secs(5));

    // The leader's caller gets every byte; the follower did not go through.
    feed.send(Bytes::from("data: 2\n\n")).unwrap();
    drop(feed);
    let mut led = Vec::new();
    while let Some(bytes) = chunk(&mut leader).await.unwrap() {
        led.extend_from_slice(&bytes);
    }
    assert_eq!(led, b"data: 1\n\ndata: 2\n\n");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}
