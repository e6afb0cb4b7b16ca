//! The `metrics` facade sees every outcome, the upstream latency and what was
//! saved.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tokio::sync::Notify;
use tower::Layer;
use tower_idempotency::IdempotencyLayer;

use crate::support::*;

#[test]
fn outcomes_latency_and_savings_are_recorded() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let gate = Arc::new(Notify::new());
                let (inner, _) = upstream({
                    let gate = Arc::clone(&gate);
                    move |seen: Seen| {
                        let gate = Arc::clone(&gate);
                        async move {
                            if seen.body.as_ref() == b"slow" {
                                gate.notified().await;
                            }
                            respond(200, "twelve bytes")
                        }
                    }
                });
                let layer = IdempotencyLayer::new();
                let service = layer.layer(inner);
                let post = |body: &'static str| {
                    Request::post("/")
                        .body(Full::new(Bytes::from_static(body.as_bytes())))
                        .unwrap()
                };
                fetch(&service, post("fast")).await; // miss
                fetch(&service, post("fast")).await; // hit
                let leader = tokio::spawn({
                    let service = service.clone();
                    async move { fetch(&service, post("slow")).await }
                });
                tokio::time::sleep(Duration::from_millis(20)).await;
                let follower = tokio::spawn({
                    let service = service.clone();
                    async move { fetch(&service, post("slow")).await }
                });
                tokio::time::sleep(Duration::from_millis(20)).await;
                gate.notify_one();
                leader.await.unwrap();
                follower.await.unwrap();
                // The follower's savings are counted as the leader's call completes.
                while layer.in_flight() > 0 {
                    tokio::task::yield_now().await;
                }
                fetch(
                    &service,
                    Request::delete("/").body(Full::new(Bytes::new())).unwrap(),
                )
                .await; // bypass
            });
    });

    let mut requests = std::collections::HashMap::new();
    let mut bytes_saved = 0;
    let mut latencies = 0;
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let name = key.key().name().to_owned();
        match (name.as_str(), value) {
            ("tower_idempotency_requests_total", DebugValue::Counter(n)) => {
                let label = key
                    .key()
                    .labels()
                    .find(|l| l.key() == "cache")
                    .unwrap()
                    .value()
                    .to_owned();
                requests.insert(label, n);
            }
            ("tower_idempotency_bytes_saved_total", DebugValue::Counter(n)) => bytes_saved = n,
            ("tower_idempotency_upstream_seconds", DebugValue::Histogram(samples)) => {
                latencies = samples.len()
            }
            _ => {}
        }
    }
    assert_eq!(requests.get("miss"), Some(&2));
    assert_eq!(requests.get("hit_l1"), Some(&1));
    assert_eq!(requests.get("coalesced"), Some(&1));
    assert_eq!(requests.get("bypass"), Some(&1));
    assert_eq!(
        bytes_saved, 24,
        "one hit and one follower, twelve bytes each"
    );
    assert_eq!(latencies, 2, "one latency per upstream call the engine led");
}
