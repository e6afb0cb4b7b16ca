//! Sample buckets: up to n stored answers per request, the first n from n
//! upstream calls, later repeats one of them at random.

use std::{collections::HashMap, sync::Arc, time::Duration};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use tokio::sync::Notify;
use tower::Layer;
use tower_idempotency::IdempotencyLayer;

use crate::support::*;

fn ask(buckets: &str) -> Request<Full<Bytes>> {
    Request::post("/v1/chat")
        .header("x-idempotency-bucket", buckets)
        .body(Full::new(Bytes::from_static(b"write me a poem")))
        .unwrap()
}

fn layer() -> IdempotencyLayer {
    IdempotencyLayer::builder().control_headers(true).build()
}

#[tokio::test]
async fn a_thousand_repeats_spread_over_three_stored_answers() {
    let (inner, calls) = numbered();
    let layer = layer();
    let service = layer.layer(inner);
    let mut seen: HashMap<String, u32> = HashMap::new();
    for _ in 0..1000 {
        let answer = fetch(&service, ask("3")).await;
        *seen
            .entry(String::from_utf8(answer.body.to_vec()).unwrap())
            .or_default() += 1;
    }
    assert_eq!(calls.get(), 3);
    let mut counts: Vec<(String, u32)> = seen.into_iter().collect();
    counts.sort();
    let names: Vec<&str> = counts.iter().map(|(body, _)| body.as_str()).collect();
    assert_eq!(names, ["answer #1", "answer #2", "answer #3"]);
    // 997 picks at random out of 3 (plus the first of each): about 333
    // each; 250 is more than five standard deviations below.
    println!("bucket distribution over 1,000 repeats: {counts:?}");
    for (body, count) in &counts {
        assert!(*count >= 250, "{body}: {count} of 1000: {counts:?}");
    }
    let stats = layer.stats();
    assert_eq!(stats.bucket_hits, 997);
    assert_eq!(stats.hits.l1, 997);
}

#[tokio::test]
async fn one_bucket_is_one_answer_and_other_requests_keep_their_own() {
    let (inner, calls) = numbered();
    let service = layer().layer(inner);
    for _ in 0..5 {
        assert_eq!(fetch(&service, ask("1")).await.body, "answer #1");
    }
    // Without the header the same request has its own entry.
    assert_eq!(
        fetch(&service, post("/v1/chat", "write me a poem"))
            .await
            .body,
        "answer #2"
    );
    assert_eq!(calls.get(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_duplicates_share_calls_while_the_buckets_fill() {
    for round in 0..100 {
        let gate = Arc::new(Notify::new());
        let (inner, calls) = upstream({
            let gate = Arc::clone(&gate);
            move |seen: Seen| {
                let gate = Arc::clone(&gate);
                async move {
                    gate.notified().await;
                    respond(200, format!("answer #{}", seen.call))
                }
            }
        });
        let layer = layer();
        let service = layer.layer(inner);
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let service = service.clone();
                tokio::spawn(async move { fetch(&service, ask("3")).await })
            })
            .collect();
        until("three leaders called upstream", || calls.get() == 3).await;
        until("every request reached the layer", || {
            layer.stats().requests == 20
        })
        .await;
        // Let every upstream call go, including any that should not exist.
        let release = {
            let gate = Arc::clone(&gate);
            tokio::spawn(async move {
                loop {
                    gate.notify_waiters();
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
        };
        for task in tasks {
            let answer = task.await.unwrap();
            assert!(answer.body.starts_with(b"answer #"), "round {round}");
        }
        release.abort();
        assert_eq!(calls.get(), 3, "round {round}");
    }
}

#[tokio::test]
async fn bucket_counts_out_of_range_or_garbage_are_answered_400() {
    let (inner, calls) = numbered();
    let service = layer().layer(inner);
    for value in ["0", "1001", "+3", "-1", "3.0", "three", ""] {
        let response = tower::ServiceExt::oneshot(service.clone(), ask(value))
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "x-idempotency-bucket: {value:?}");
    }
    assert_eq!(
        fetch(&service, ask("1000")).await.body,
        "answer #1",
        "the maximum is accepted"
    );
    assert_eq!(calls.get(), 1);
}
