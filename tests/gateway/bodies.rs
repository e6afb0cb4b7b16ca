//! Bodies over `--max-body`: forwarded intact, never stored.

use std::time::Duration;

use axum::{routing::get, Router};
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::Value;

use crate::{
    harness::{get as get_request, send, sha256_hex, until, Gateway},
    support::Calls,
    upstream::Upstream,
};

const MIB: usize = 1024 * 1024;

/// `len` bytes that do not repeat (xorshift), so nothing can fake them.
fn noise(len: usize, seed: u64) -> Bytes {
    let mut state = seed | 1;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(len);
    Bytes::from(bytes)
}

fn upload(url: &str, body: Bytes) -> Request<Full<Bytes>> {
    Request::post(url)
        .header("content-type", "application/octet-stream")
        .body(Full::new(body))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_40_mib_body_arrives_intact_and_passes_through_uncached() {
    let upstream = Upstream::echo().await;
    // The default --max-body (16 MiB).
    let gateway = Gateway::start(&["--upstream", &upstream.url()]);
    let body = noise(40 * MIB, 0x9e37_79b9_7f4a_7c15);
    let sent = sha256_hex(&body);

    for call in 1..=2 {
        let answer = send(upload(&gateway.url("/v1/files"), body.clone())).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.cache_status(), "tower-idempotency; fwd=bypass");
        let echo: Value = serde_json::from_slice(&answer.body).unwrap();
        assert_eq!(echo["call"], call, "every upload reaches the upstream");
        assert_eq!(echo["body_len"], 40 * MIB);
        assert_eq!(echo["body_sha256"], sent, "the upstream got the same bytes");
    }
    assert_eq!(upstream.calls.get(), 2);
    let stats = gateway.stats().await;
    assert_eq!(stats["process"]["bypassed"]["too_large"], 2);
    assert_eq!(stats["process"]["stored"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_body_decides_which_requests_are_cached() {
    let upstream = Upstream::echo().await;
    let gateway = Gateway::start(&["--upstream", &upstream.url(), "--max-body", "1024"]);

    let small = noise(512, 1);
    let first = send(upload(&gateway.url("/v1/files"), small.clone())).await;
    let stored = until(Duration::from_secs(5), || async {
        gateway.stats().await["process"]["stored"] == 1
    })
    .await;
    assert!(stored, "{first:?}");
    let second = send(upload(&gateway.url("/v1/files"), small)).await;
    assert!(second.cache_status().contains("; hit"), "{second:?}");
    assert_eq!(second.body, first.body);
    assert_eq!(upstream.calls.get(), 1);

    let large = noise(4096, 2);
    for call in 2..=3 {
        let answer = send(upload(&gateway.url("/v1/files"), large.clone())).await;
        assert_eq!(answer.cache_status(), "tower-idempotency; fwd=bypass");
        let echo: Value = serde_json::from_slice(&answer.body).unwrap();
        assert_eq!(echo["call"], call);
        assert_eq!(echo["body_sha256"], sha256_hex(&large));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_over_max_body_reaches_the_client_whole_but_is_not_stored() {
    let calls = Calls::default();
    let big = noise(3 * MIB, 3);
    let router = Router::new().route(
        "/v1/big",
        get({
            let (calls, big) = (calls.clone(), big.clone());
            move || {
                calls.inc();
                let big = big.clone();
                async move { big }
            }
        }),
    );
    let upstream = Upstream::serve(router, calls).await;
    let gateway = Gateway::start(&[
        "--upstream",
        &upstream.url(),
        "--max-body",
        &MIB.to_string(),
    ]);

    for call in 1..=2 {
        let answer = send(get_request(&gateway.url("/v1/big"))).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body.len(), big.len());
        assert!(answer.body == big, "every byte arrives");
        assert_eq!(upstream.calls.get(), call, "nothing was stored to replay");
    }
    assert_eq!(gateway.stats().await["process"]["stored"], 0);
}
