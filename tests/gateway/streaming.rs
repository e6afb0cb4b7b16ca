//! Server-sent events pass through as they are produced, and are replayed.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use axum::{body::Body, response::IntoResponse, routing::get, Router};
use bytes::BytesMut;
use http_body_util::BodyExt;
use tokio::{sync::oneshot, time::timeout};

use crate::{
    harness::{client, get as get_request, send, until, Gateway},
    support::{channel_body, Calls},
    upstream::Upstream,
};

const FIRST: &str = "event: delta\ndata: {\"text\":\"Hello\"}\n\n";
const REST: [&str; 2] = [
    "event: delta\ndata: {\"text\":\", world\"}\n\n",
    "event: done\ndata: [DONE]\n\n",
];

/// An upstream that sends the first event, then waits for the test's signal
/// before it sends the rest.
struct Sse {
    upstream: Upstream,
    release: Arc<Mutex<Option<oneshot::Sender<()>>>>,
    finished: Arc<AtomicBool>,
}

async fn sse_upstream() -> Sse {
    let calls = Calls::default();
    let release = Arc::new(Mutex::new(None));
    let finished = Arc::new(AtomicBool::new(false));
    let router =
        Router::new().route(
            "/v1/events",
            get({
                let (calls, release, finished) =
                    (calls.clone(), Arc::clone(&release), Arc::clone(&finished));
                move || {
                    calls.inc();
                    let (tx, rx) = oneshot::channel();
                    *release.lock().unwrap() = Some(tx);
                    let (feed, body) = channel_body();
                    let finished = Arc::clone(&finished);
                    tokio::spawn(async move {
                        feed.data(FIRST);
                        let _ = rx.await;
                        for event in REST {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            feed.data(event);
                        }
                        finished.store(true, Ordering::SeqCst);
                    });
                    async move {
                        ([("content-type", "text/event-stream")], Body::new(body)).into_response()
                    }
                }
            }),
        );
    Sse {
        upstream: Upstream::serve(router, calls).await,
        release,
        finished,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_the_client_while_the_upstream_is_still_producing() {
    let sse = sse_upstream().await;
    let gateway = Gateway::start(&["--upstream", &sse.upstream.url()]);

    let response = timeout(
        Duration::from_secs(10),
        client().request(get_request(&gateway.url("/v1/events"))),
    )
    .await
    .expect("the response head arrives before the stream ends")
    .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/event-stream",
        "the upstream's headers pass through"
    );
    let mut body = response.into_body();
    let mut received = BytesMut::new();
    while received.len() < FIRST.len() {
        let frame = timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("the first event arrives while the upstream waits for the test")
            .expect("the stream goes on")
            .unwrap();
        if let Ok(data) = frame.into_data() {
            received.extend_from_slice(&data);
        }
    }
    assert_eq!(&received[..], FIRST.as_bytes());
    assert!(
        !sse.finished.load(Ordering::SeqCst),
        "the upstream has not finished yet"
    );

    // Only now does the upstream send the rest.
    let release = sse
        .release
        .lock()
        .unwrap()
        .take()
        .expect("the upstream was called");
    release.send(()).unwrap();
    let rest = timeout(Duration::from_secs(10), body.collect())
        .await
        .expect("the stream ends")
        .unwrap()
        .to_bytes();
    received.extend_from_slice(&rest);
    let expected = [FIRST, REST[0], REST[1]].concat();
    assert_eq!(std::str::from_utf8(&received).unwrap(), expected);
    assert!(sse.finished.load(Ordering::SeqCst));

    // The recorded stream is replayed byte for byte, without a second call.
    let stored = until(Duration::from_secs(5), || async {
        gateway.stats().await["process"]["stored"] == 1
    })
    .await;
    assert!(stored, "the stream is stored once it is complete");
    let replay = send(get_request(&gateway.url("/v1/events"))).await;
    assert!(replay.cache_status().contains("; hit"), "{replay:?}");
    assert_eq!(replay.body, expected.as_bytes());
    assert_eq!(sse.upstream.calls.get(), 1);
}
