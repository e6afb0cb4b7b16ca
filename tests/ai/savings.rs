//! Tokens and money saved add up exactly over a scripted run of misses, hits
//! and coalesced followers; the sampling policy; stream and non-stream
//! requests never share an entry.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tokio::sync::Notify;
use tower::Layer;
use tower_idempotency::{
    ai::{parse_usage, PriceTable, Usage},
    IdempotencyLayer, SamplingPolicy,
};

use crate::support::*;

const OPENAI: &[u8] = include_bytes!("fixtures/openai_chat.json");
const ANTHROPIC_SSE: &[u8] = include_bytes!("fixtures/anthropic_messages_stream.sse");

fn chat(path: &str, body: &'static str) -> Request<Full<Bytes>> {
    Request::post(path)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

/// OpenAI JSON on /openai, Anthropic server-sent events on /anthropic (held
/// until released), and a vision API with no usage on /vision.
fn ai_upstream(gate: Arc<Notify>) -> (impl TestService, Calls) {
    upstream(move |seen: Seen| {
        let gate = Arc::clone(&gate);
        async move {
            match seen.head.uri.path() {
                "/openai" => Response::builder()
                    .header("content-type", "application/json")
                    .body(full(OPENAI))
                    .unwrap(),
                "/anthropic" => {
                    gate.notified().await;
                    let (feed, body) = channel_body();
                    // Streamed in pieces, as the API does.
                    for piece in ANTHROPIC_SSE.chunks(97) {
                        feed.data(Bytes::copy_from_slice(piece));
                    }
                    Response::builder()
                        .header("content-type", "text/event-stream")
                        .body(body.boxed())
                        .unwrap()
                }
                _ => respond(200, r#"{"description":"a red sneaker"}"#),
            }
        }
    })
}

#[tokio::test]
async fn tokens_and_money_saved_add_up_exactly() {
    let prices = PriceTable::new()
        .with_model("gpt-4o", 2.50, 10.00)
        .with_model("claude-sonnet-4", 3.00, 15.00)
        .with_per_call(0.01);
    let layer = IdempotencyLayer::builder().prices(prices.clone()).build();
    let gate = Arc::new(Notify::new());
    let (inner, calls) = ai_upstream(Arc::clone(&gate));
    let service = layer.layer(inner);

    let openai = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;
    let anthropic =
        r#"{"model":"claude-sonnet-4","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let vision = r#"{"image":"c3RvY2sgcGhvdG8="}"#;

    // OpenAI: a miss, then two hits.
    for _ in 0..3 {
        fetch(&service, chat("/openai", openai)).await;
    }
    // Anthropic, streamed: one leader and three followers, then one hit.
    let burst: Vec<_> = (0..4)
        .map(|_| {
            let service = service.clone();
            tokio::spawn(async move { fetch(&service, chat("/anthropic", anthropic)).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    gate.notify_one();
    for task in burst {
        assert_eq!(&task.await.unwrap().body[..], ANTHROPIC_SSE);
    }
    fetch(&service, chat("/anthropic", anthropic)).await;
    // A vision call without token usage: priced per call. One miss, two hits.
    for _ in 0..3 {
        fetch(&service, chat("/vision", vision)).await;
    }
    assert_eq!(calls.get(), 3);

    let openai_usage = parse_usage(Some("application/json"), OPENAI).unwrap();
    let anthropic_usage = parse_usage(Some("text/event-stream"), ANTHROPIC_SSE).unwrap();
    let expected_tokens = 2 * openai_usage.total() + 4 * anthropic_usage.total();
    let expected_money = prices
        .cost(Some("gpt-4o"), Some(&openai_usage))
        .micro_dollars()
        * 2
        + prices
            .cost(Some("claude-sonnet-4"), Some(&anthropic_usage))
            .micro_dollars()
            * 4
        + prices.cost(None, None::<&Usage>).micro_dollars() * 2;

    let stats = layer.stats();
    assert_eq!((stats.hits.l1, stats.coalesced, stats.misses), (5, 3, 3));
    assert_eq!(stats.tokens_saved, expected_tokens);
    assert_eq!(stats.money_saved.micro_dollars(), expected_money);
    assert!(expected_money > 0 && expected_tokens > 0);
    let json = serde_json::to_value(&stats).unwrap();
    assert_eq!(json["tokens_saved"], expected_tokens);
    assert_eq!(json["money_saved"]["micro_dollars"], expected_money);
}

#[tokio::test]
async fn unparseable_bodies_add_no_tokens_and_fail_nothing() {
    let (inner, _) = upstream(|_| async {
        Response::builder()
            .header("content-type", "application/json")
            .body(full(r#"{"usage": {"prompt_tokens": "many"}"#))
            .unwrap()
    });
    let layer = IdempotencyLayer::builder()
        .prices(PriceTable::new().with_model("m", 1.0, 1.0))
        .build();
    let service = layer.layer(inner);
    for _ in 0..2 {
        assert_eq!(
            fetch(&service, chat("/", r#"{"model":"m"}"#)).await.status,
            200
        );
    }
    assert_eq!(layer.stats().tokens_saved, 0);
    assert_eq!(layer.stats().hits.l1, 1);
}

#[tokio::test]
async fn stream_and_non_stream_requests_never_share_an_entry() {
    let (inner, calls) = numbered();
    let service = IdempotencyLayer::new().layer(inner);
    let plain = fetch(
        &service,
        chat("/", r#"{"model":"m","stream":false,"messages":[]}"#),
    )
    .await;
    let streamed = fetch(
        &service,
        chat("/", r#"{"model":"m","stream":true,"messages":[]}"#),
    )
    .await;
    assert_ne!(plain.body, streamed.body);
    assert_eq!(calls.get(), 2);
}

#[tokio::test]
async fn sampling_policy_skip_caches_only_deterministic_requests() {
    let (inner, calls) = numbered();
    let layer = IdempotencyLayer::builder()
        .sampling_policy(SamplingPolicy::Skip)
        .build();
    let service = layer.layer(inner);
    let cases: [(&'static str, usize); 4] = [
        (r#"{"model":"m","temperature":0,"messages":[]}"#, 1),
        (
            r#"{"model":"m","temperature":0.7,"seed":42,"messages":[]}"#,
            1,
        ),
        (r#"{"model":"m","temperature":0.7,"messages":[]}"#, 2),
        (r#"{"model":"m","messages":[]}"#, 2),
    ];
    for (body, expected_calls) in cases {
        let before = calls.get();
        let first = fetch(&service, chat("/", body)).await;
        fetch(&service, chat("/", body)).await;
        assert_eq!(calls.get() - before, expected_calls, "{body}");
        if expected_calls == 2 {
            assert_eq!(first.cache_status(), "tower-idempotency; fwd=bypass");
        }
    }
    assert_eq!(layer.stats().bypassed.sampling, 4);
}

#[tokio::test]
async fn sampling_policy_retry_window_keeps_nondeterministic_answers_briefly() {
    let (inner, calls) = numbered();
    let service = IdempotencyLayer::builder()
        .sampling_policy(SamplingPolicy::RetryWindow(Duration::from_millis(300)))
        .build()
        .layer(inner);
    let creative = r#"{"model":"m","temperature":1.2,"messages":[]}"#;
    fetch(&service, chat("/", creative)).await;
    assert!(
        fetch(&service, chat("/", creative))
            .await
            .cache_status()
            .contains("hit"),
        "a retry is absorbed"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    fetch(&service, chat("/", creative)).await;
    assert_eq!(
        calls.get(),
        2,
        "an intentional re-ask later gets a fresh answer"
    );

    // Deterministic requests keep the full TTL.
    let exact = r#"{"model":"m","temperature":0,"messages":[]}"#;
    fetch(&service, chat("/", exact)).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    fetch(&service, chat("/", exact)).await;
    assert_eq!(calls.get(), 3);
}

#[tokio::test]
async fn sampling_policy_bucket_keeps_n_answers_for_sampled_requests_only() {
    let (inner, calls) = numbered();
    let layer = IdempotencyLayer::builder()
        .sampling_policy(SamplingPolicy::Bucket(3))
        .build();
    let service = layer.layer(inner);
    let creative = r#"{"model":"m","temperature":0.9,"messages":[]}"#;
    let mut bodies = std::collections::BTreeSet::new();
    for _ in 0..30 {
        bodies.insert(fetch(&service, chat("/", creative)).await.body);
    }
    assert_eq!(calls.get(), 3, "three answers kept");
    assert_eq!(bodies.len(), 3);
    assert_eq!(layer.stats().bucket_hits, 27);

    // A deterministic request has one answer.
    let exact = r#"{"model":"m","temperature":0,"messages":[]}"#;
    for _ in 0..5 {
        fetch(&service, chat("/", exact)).await;
    }
    assert_eq!(calls.get(), 4);
    // Zero is clamped to one bucket: one answer.
    let (inner, calls) = numbered();
    let service = IdempotencyLayer::builder()
        .sampling_policy(SamplingPolicy::Bucket(0))
        .build()
        .layer(inner);
    for _ in 0..5 {
        fetch(&service, chat("/", creative)).await;
    }
    assert_eq!(calls.get(), 1);
}
