//! Recordings in flight share one byte budget.

use std::{sync::Arc, time::Duration};

use http::Response;
use tokio::time::timeout;
use tower::{Layer, ServiceExt};
use tower_idempotency::IdempotencyLayer;

use crate::support::*;

const PATIENCE: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn recordings_past_the_budget_stream_whole_but_are_not_stored() {
    let (feed_a, body_a) = channel_body();
    let (feed_b, body_b) = channel_body();
    let bodies = Arc::new(std::sync::Mutex::new(vec![body_b, body_a]));
    let (inner, _calls) = upstream(move |_seen: Seen| {
        let body = bodies.lock().unwrap().pop().expect("two calls");
        async move { Response::new(body.boxed()) }
    });
    let layer = IdempotencyLayer::builder()
        .max_recording_bytes(100_000)
        .build();
    let service = layer.layer(inner);
    let a = service.clone().oneshot(post("/", "a")).await.unwrap();
    let b = service.clone().oneshot(post("/", "b")).await.unwrap();
    let chunk = vec![7u8; 10_000];
    for _ in 0..8 {
        feed_a.data(chunk.clone());
        feed_b.data(chunk.clone());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop((feed_a, feed_b));
    let a = timeout(PATIENCE, Answer::read(a)).await.unwrap();
    let b = timeout(PATIENCE, Answer::read(b)).await.unwrap();
    assert_eq!(a.body.len(), 80_000);
    assert_eq!(b.body.len(), 80_000);
    assert!(a.body.iter().chain(b.body.iter()).all(|&byte| byte == 7));
    assert!(eventually(PATIENCE, || layer.in_flight() == 0).await);
    assert!(layer.stats().stored <= 1, "{} stored", layer.stats().stored);
    assert_eq!(layer.recording_bytes(), 0);
}

#[tokio::test]
async fn a_known_length_past_the_budget_is_not_promised_as_stored() {
    let (inner, calls) = numbered();
    let layer = IdempotencyLayer::builder().max_recording_bytes(4).build();
    let service = layer.layer(inner);
    let answer = fetch(&service, post("/", "q")).await;
    assert_eq!(&answer.body[..], b"answer #1");
    assert_eq!(answer.cache_status(), "tower-idempotency; fwd=uri-miss");
    fetch(&service, post("/", "q")).await;
    assert_eq!(calls.get(), 2);
    assert_eq!(layer.recording_bytes(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_budget_is_whole_again_after_many_concurrent_recordings() {
    let (inner, _calls) = upstream(|seen: Seen| async move {
        // 1 to 40 KB, of unknown length, in 1 KB chunks.
        let len = (seen.body.len() % 40 + 1) * 1024;
        let chunks: Vec<Result<http_body::Frame<bytes::Bytes>, std::io::Error>> = (0..len / 1024)
            .map(|_| Ok(http_body::Frame::data(bytes::Bytes::from(vec![1u8; 1024]))))
            .collect();
        let body = http_body_util::StreamBody::new(Chunks(chunks.into()));
        Response::new(http_body_util::BodyExt::boxed(body))
    });
    let layer = IdempotencyLayer::builder()
        .max_recording_bytes(64 * 1024)
        .build();
    let service = layer.layer(inner);
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let service = service.clone();
            let body: &'static str = Box::leak("x".repeat(i % 40 + i / 40 * 40).into_boxed_str());
            tokio::spawn(async move {
                let answer = fetch(&service, post("/", body)).await;
                (body.len() % 40 + 1) * 1024 == answer.body.len()
            })
        })
        .collect();
    for task in tasks {
        assert!(
            timeout(PATIENCE, task).await.unwrap().unwrap(),
            "every byte arrives"
        );
    }
    assert!(eventually(PATIENCE, || layer.in_flight() == 0).await);
    assert_eq!(layer.recording_bytes(), 0);
}

/// A stream of ready frames.
struct Chunks(std::collections::VecDeque<Result<http_body::Frame<bytes::Bytes>, std::io::Error>>);

impl futures_core::Stream for Chunks {
    type Item = Result<http_body::Frame<bytes::Bytes>, std::io::Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        std::task::Poll::Ready(self.0.pop_front())
    }
}

#[tokio::test]
async fn a_budget_of_zero_stores_nothing_and_never_replays_an_empty_body() {
    let (inner, calls) = numbered();
    let layer = IdempotencyLayer::builder().max_recording_bytes(0).build();
    let service = layer.layer(inner);
    for call in 1..=3 {
        let answer = fetch(&service, post("/", "q")).await;
        assert_eq!(answer.body, format!("answer #{call}"));
    }
    assert_eq!(calls.get(), 3);
    assert_eq!(layer.stats().stored, 0);
}

#[tokio::test]
async fn a_budget_of_zero_still_stores_an_empty_answer() {
    let (inner, calls) = upstream(|_: Seen| async move { respond(200, "") });
    let layer = IdempotencyLayer::builder().max_recording_bytes(0).build();
    let service = layer.layer(inner);
    fetch(&service, post("/", "q")).await;
    let again = fetch(&service, post("/", "q")).await;
    assert!(
        again.cache_status().contains("; hit"),
        "{}",
        again.cache_status()
    );
    assert_eq!(calls.get(), 1);
}
