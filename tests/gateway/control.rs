//! Per-request control headers: each does what it says, and none of them
//! reaches the upstream.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::Value;

use crate::{
    harness::{send, until, Gateway},
    support::Answer,
    upstream::Upstream,
};

const PROMPT: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;

/// POSTs the prompt with `headers`.
async fn ask(gateway: &Gateway, headers: &[(&str, &str)]) -> Answer {
    let mut request = Request::post(gateway.url("/v1/chat/completions"))
        .header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    send(
        request
            .body(Full::new(Bytes::from_static(PROMPT.as_bytes())))
            .unwrap(),
    )
    .await
}

/// The upstream call number an echo answer carries.
fn call_of(answer: &Answer) -> u64 {
    let echo: Value = serde_json::from_slice(&answer.body).expect("an echo answer");
    echo["call"].as_u64().unwrap()
}

/// Waits until the gateway has stored `n` responses.
async fn stored(gateway: &Gateway, n: u64) {
    let done = until(Duration::from_secs(5), || async {
        gateway.stats().await["process"]["stored"] == n
    })
    .await;
    assert!(done, "{n} responses stored");
}

/// No request the upstream received carried a control header.
fn assert_no_control_headers(upstream: &Upstream) {
    for received in upstream.received() {
        for name in received.headers.keys() {
            assert!(
                !name.as_str().starts_with("x-idempotency-"),
                "{name} reached the upstream"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bypass_goes_to_the_upstream_and_stores_nothing() {
    let upstream = Upstream::echo().await;
    let gateway = Gateway::start(&["--upstream", &upstream.url(), "--control-headers"]);

    let first = ask(&gateway, &[]).await;
    stored(&gateway, 1).await;
    let bypassed = ask(&gateway, &[("x-idempotency-bypass", "true")]).await;
    assert_eq!(bypassed.cache_status(), "tower-idempotency; fwd=bypass");
    assert_eq!(call_of(&bypassed), 2, "not answered from the stored entry");
    // The stored entry is still the first answer.
    let again = ask(&gateway, &[]).await;
    assert!(again.cache_status().contains("; hit"), "{again:?}");
    assert_eq!(again.body, first.body);
    assert_eq!(upstream.calls.get(), 2);
    assert_eq!(gateway.stats().await["process"]["stored"], 1);
    assert_no_control_headers(&upstream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_calls_the_upstream_and_replaces_the_entry() {
    let upstream = Upstream::echo().await;
    let gateway = Gateway::start(&["--upstream", &upstream.url(), "--control-headers"]);

    ask(&gateway, &[]).await;
    stored(&gateway, 1).await;
    let refreshed = ask(&gateway, &[("x-idempotency-refresh", "true")]).await;
    assert_eq!(call_of(&refreshed), 2, "the look-up was skipped");
    assert_eq!(
        refreshed.cache_status(),
        "tower-idempotency; fwd=request; stored"
    );
    stored(&gateway, 2).await;
    let again = ask(&gateway, &[]).await;
    assert!(again.cache_status().contains("; hit"), "{again:?}");
    assert_eq!(
        again.body, refreshed.body,
        "the fresh answer replaced the old one"
    );
    assert_eq!(upstream.calls.get(), 2);
    assert_no_control_headers(&upstream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_sets_how_long_this_entry_is_replayed() {
    let upstream = Upstream::echo().await;
    // The default TTL is an hour; this request asks for one second.
    let gateway = Gateway::start(&["--upstream", &upstream.url(), "--control-headers"]);

    ask(&gateway, &[("x-idempotency-ttl", "1")]).await;
    stored(&gateway, 1).await;
    let hit = ask(&gateway, &[]).await;
    assert!(hit.cache_status().contains("; hit"), "{hit:?}");
    assert_eq!(upstream.calls.get(), 1);

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let expired = ask(&gateway, &[]).await;
    assert_eq!(call_of(&expired), 2, "the entry expired after one second");
    assert_no_control_headers(&upstream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_keeps_entries_apart() {
    let upstream = Upstream::echo().await;
    let gateway = Gateway::start(&[
        "--upstream",
        &upstream.url(),
        "--namespace",
        "model-a",
        "--control-headers",
    ]);

    let a = ask(&gateway, &[]).await;
    stored(&gateway, 1).await;
    let b = ask(&gateway, &[("x-idempotency-namespace", "model-b")]).await;
    assert_eq!(call_of(&b), 2, "another namespace, another entry");
    stored(&gateway, 2).await;
    let b_again = ask(&gateway, &[("x-idempotency-namespace", "model-b")]).await;
    assert!(b_again.cache_status().contains("; hit"), "{b_again:?}");
    assert_eq!(b_again.body, b.body);
    let a_again = ask(&gateway, &[]).await;
    assert_eq!(a_again.body, a.body, "the --namespace entry is untouched");
    assert_eq!(upstream.calls.get(), 2);
    assert_no_control_headers(&upstream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_control_value_is_answered_400_without_an_upstream_call() {
    let upstream = Upstream::echo().await;
    let gateway = Gateway::start(&["--upstream", &upstream.url(), "--control-headers"]);
    for (name, value) in [
        ("x-idempotency-ttl", "soon"),
        ("x-idempotency-bypass", "perhaps"),
    ] {
        let answer = ask(&gateway, &[(name, value)]).await;
        assert_eq!(answer.status, 400, "{name}: {value}");
    }
    assert_eq!(upstream.calls.get(), 0);
}

/// Off by default: on a shared gateway no caller steers the cache. The
/// headers are removed, so they neither steer it nor reach the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_flag_control_headers_are_stripped_and_steer_nothing() {
    let upstream = Upstream::echo().await;
    let gateway = Gateway::start(&["--upstream", &upstream.url()]);

    let first = ask(&gateway, &[]).await;
    stored(&gateway, 1).await;
    for (name, value) in [
        ("x-idempotency-bypass", "true"),
        ("x-idempotency-refresh", "true"),
        ("x-idempotency-namespace", "other"),
        ("x-idempotency-ttl", "soon"),
    ] {
        let answer = ask(&gateway, &[(name, value)]).await;
        assert_eq!(answer.status, 200, "{name}: {answer:?}");
        assert!(
            answer.cache_status().contains("; hit"),
            "{name}: {answer:?}"
        );
        assert_eq!(answer.body, first.body);
    }
    // A request that goes through carries none of them either.
    let bypass = ask(
        &gateway,
        &[("cache-control", "no-store"), ("x-idempotency-ttl", "5")],
    )
    .await;
    assert_eq!(bypass.cache_status(), "tower-idempotency; fwd=bypass");
    assert_eq!(upstream.calls.get(), 2);
    assert_no_control_headers(&upstream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_says_why_two_tenants_do_not_share_an_entry() {
    let upstream = Upstream::echo().await;
    let gateway = Gateway::start(&["--upstream", &upstream.url(), "--control-headers"]);

    let explain = |answer: &Answer| answer.header("x-idempotency-explain").unwrap().to_owned();
    let alice = ask(
        &gateway,
        &[
            ("authorization", "Bearer sk-alice"),
            ("x-idempotency-explain", "true"),
        ],
    )
    .await;
    let bob = ask(
        &gateway,
        &[
            ("authorization", "Bearer sk-bob"),
            ("x-idempotency-explain", "true"),
        ],
    )
    .await;
    // Same items, but the keys differ: the only thing that differs is a
    // value, which is named (`authorization`) but never shown.
    let (alice, bob) = (explain(&alice), explain(&bob));
    let items = |line: &str| line.rsplit_once("; key=").unwrap().0.to_owned();
    assert_eq!(items(&alice), items(&bob));
    assert_ne!(alice, bob);
    assert!(
        alice.contains("headers=authorization,content-type"),
        "{alice}"
    );
    assert!(alice.contains("body=canonical-json"), "{alice}");
    assert!(!alice.contains("sk-alice") && !bob.contains("sk-bob"));
    assert_eq!(upstream.calls.get(), 2);
    assert_no_control_headers(&upstream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampled_requests_fill_three_buckets_then_get_one_of_them() {
    let upstream = Upstream::echo().await;
    let gateway = Gateway::start(&["--upstream", &upstream.url(), "--sampling", "bucket:3"]);
    let creative = r#"{"model":"gpt-4o-mini","temperature":0.9,"messages":[]}"#;
    let mut calls = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let answer = send(
            Request::post(gateway.url("/v1/chat/completions"))
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(creative.as_bytes())))
                .unwrap(),
        )
        .await;
        calls.insert(call_of(&answer));
    }
    assert_eq!(calls.into_iter().collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(upstream.calls.get(), 3);
    assert_eq!(gateway.stats().await["process"]["bucket_hits"], 27);
    // A deterministic request keeps one answer.
    let exact = r#"{"model":"gpt-4o-mini","temperature":0,"messages":[]}"#;
    for _ in 0..2 {
        send(
            Request::post(gateway.url("/v1/chat/completions"))
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(exact.as_bytes())))
                .unwrap(),
        )
        .await;
    }
    assert_eq!(upstream.calls.get(), 4);
}
