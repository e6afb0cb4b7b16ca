//! Every wait has a deadline: followers, the leader's call, its body; and a
//! failing upstream costs no more time than it would without the layer.

use std::{
    future::pending,
    io,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tokio::time::timeout;
use tower::{Layer, ServiceExt};
use tower_idempotency::{ErrorKind, IdempotencyLayer, RequestBody};

use crate::support::*;

const PATIENCE: Duration = Duration::from_secs(10);

/// An upstream whose first call never answers; later calls answer at once.
fn first_call_hangs() -> (impl TestService, Calls) {
    upstream(|seen: Seen| async move {
        if seen.call == 1 {
            pending::<()>().await;
        }
        respond(200, format!("answer #{}", seen.call))
    })
}

#[tokio::test]
async fn a_follower_waits_at_most_the_wait_timeout_then_goes_through() {
    let (inner, calls) = first_call_hangs();
    let service = IdempotencyLayer::builder()
        .wait_timeout(Duration::from_millis(200))
        .build()
        .layer(inner);
    let _leader = tokio::spawn({
        let service = service.clone();
        async move { fetch(&service, post("/", "q")).await }
    });
    assert!(eventually(PATIENCE, || calls.get() == 1).await);
    let follower = timeout(PATIENCE, fetch(&service, post("/", "q")))
        .await
        .expect("the follower is not stuck behind a hung leader");
    assert_eq!(&follower.body[..], b"answer #2");
    assert_eq!(calls.get(), 2);
}

#[tokio::test]
async fn a_strict_follower_is_answered_409_past_the_wait_timeout() {
    let (inner, calls) = first_call_hangs();
    let service = IdempotencyLayer::builder()
        .wait_timeout(Duration::from_millis(200))
        .strict(true)
        .build()
        .layer(inner);
    let _leader = tokio::spawn({
        let service = service.clone();
        async move { fetch(&service, post("/", "q")).await }
    });
    assert!(eventually(PATIENCE, || calls.get() == 1).await);
    let (status, kind) = timeout(PATIENCE, rejection(&service, post("/", "q")))
        .await
        .expect("the follower is not stuck behind a hung leader");
    assert_eq!((status, kind), (409, Some(ErrorKind::InFlight)));
    assert_eq!(calls.get(), 1);
}

#[tokio::test]
async fn a_leader_without_a_head_in_time_is_answered_504_and_releases_its_followers() {
    tokio::time::pause();
    let (inner, calls) = upstream(|_seen: Seen| async move {
        pending::<()>().await;
        respond(200, "never")
    });
    let layer = IdempotencyLayer::builder()
        .upstream_timeout(Duration::from_secs(30))
        .build();
    let service = layer.layer(inner);
    let leader = tokio::spawn({
        let service = service.clone();
        async move { rejection(&service, post("/", "q")).await }
    });
    assert!(eventually(PATIENCE, || calls.get() == 1).await);
    let follower = tokio::spawn({
        let service = service.clone();
        async move { rejection(&service, post("/", "q")).await }
    });
    let leader = timeout(Duration::from_secs(35), leader)
        .await
        .expect("the leader is answered past the bound")
        .unwrap();
    assert_eq!(leader, (504, Some(ErrorKind::UpstreamTimeout)));
    // The follower went through itself, and got its own bound.
    let follower = timeout(Duration::from_secs(35), follower)
        .await
        .expect("the follower is released")
        .unwrap();
    assert_eq!(follower, (504, Some(ErrorKind::UpstreamTimeout)));
    assert_eq!(calls.get(), 2);
    assert_eq!(layer.in_flight(), 0);
}

#[tokio::test]
async fn a_body_silent_past_the_idle_timeout_fails_for_every_reader_and_is_not_stored() {
    let (feed, body) = channel_body();
    let body = std::sync::Arc::new(std::sync::Mutex::new(Some(body)));
    let (inner, calls) = upstream(move |_seen: Seen| {
        let body = body.lock().unwrap().take();
        async move {
            match body {
                Some(body) => Response::new(body.boxed()),
                None => respond(200, "fresh"),
            }
        }
    });
    let layer = IdempotencyLayer::builder()
        .idle_timeout(Duration::from_millis(200))
        .build();
    let service = layer.layer(inner);
    feed.data("first chunk;");
    let leader = service.clone().oneshot(post("/", "q")).await.unwrap();
    let follower = service.clone().oneshot(post("/", "q")).await.unwrap();
    let started = Instant::now();
    let leader = timeout(PATIENCE, leader.into_body().collect())
        .await
        .unwrap();
    let follower = timeout(PATIENCE, follower.into_body().collect())
        .await
        .unwrap();
    assert!(leader.is_err() && follower.is_err());
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(layer.stats().stored, 0);
    assert!(eventually(PATIENCE, || layer.in_flight() == 0).await);
    let again = fetch(&service, post("/", "q")).await;
    assert_eq!(&again.body[..], b"fresh");
    assert_eq!(calls.get(), 2);
    drop(feed);
}

#[tokio::test]
async fn zero_and_maximal_bounds_do_not_panic() {
    for bound in [Duration::ZERO, Duration::from_nanos(1), Duration::MAX] {
        let (inner, _) = numbered();
        let service = IdempotencyLayer::builder()
            .upstream_timeout(bound)
            .idle_timeout(bound)
            .wait_timeout(bound)
            .max_recording_bytes(if bound.is_zero() { 0 } else { u64::MAX })
            .build()
            .layer(inner);
        let answer = fetch(&service, post("/", "q")).await;
        assert!(
            [200, 504].contains(&answer.status),
            "{bound:?}: {}",
            answer.status
        );
    }
}

/// An upstream whose every call fails after `after`.
fn failing(
    after: Duration,
) -> (
    impl tower::Service<
            Request<RequestBody<Full<Bytes>>>,
            Response = Response<TestBody>,
            Error = io::Error,
            Future: Send,
        > + Clone
        + Send
        + 'static,
    Calls,
) {
    let calls = Calls::default();
    let counter = calls.clone();
    let service = tower::service_fn(move |_request: Request<RequestBody<Full<Bytes>>>| {
        counter.inc();
        async move {
            tokio::time::sleep(after).await;
            Err::<Response<TestBody>, _>(io::Error::other("upstream down"))
        }
    });
    (service, calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failover_after_an_upstream_error_is_not_serialised() {
    const T: Duration = Duration::from_millis(300);
    let (inner, calls) = failing(T);
    let service = IdempotencyLayer::new().layer(inner);
    let started = Instant::now();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let service = service.clone();
            tokio::spawn(async move { service.oneshot(post("/", "q")).await.map(|_| ()) })
        })
        .collect();
    for task in tasks {
        let answer = timeout(PATIENCE, task).await.unwrap().unwrap();
        assert!(answer.is_err());
    }
    let elapsed = started.elapsed();
    assert!(elapsed < T * 5 / 2, "answered after {elapsed:?}");
    assert!(calls.get() <= 8, "{} calls", calls.get());
}

/// The client adapter awaits the head itself: the same bound applies there.
#[cfg(feature = "reqwest")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leader_without_a_head_in_time_is_answered_504() {
    use axum::{routing, Router};
    use tower_idempotency::IdempotencyMiddleware;

    let calls = Calls::default();
    let counter = calls.clone();
    let app = Router::new().route(
        "/v1/chat",
        routing::post(move || {
            counter.inc();
            pending::<&'static str>()
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/chat", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let layer = IdempotencyLayer::builder()
        .upstream_timeout(Duration::from_millis(300))
        .build();
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(IdempotencyMiddleware::new(&layer).default_headers(Default::default()))
        .build();
    let response = timeout(PATIENCE, client.post(&url).body("q").send())
        .await
        .expect("answered past the bound")
        .unwrap();
    assert_eq!(response.status(), 504);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    assert_eq!(calls.get(), 1);
    assert_eq!(layer.in_flight(), 0);
}
