//! Waits on the upstream are bounded: no response head in time is 504, a
//! duplicate does not wait past `--wait-timeout`, and a body that stalls
//! ends (and is not stored).

use std::{
    convert::Infallible,
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{body::Body, extract::State, response::IntoResponse, Router};
use bytes::Bytes;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use serde_json::Value;
use tokio::time::timeout;

use crate::{
    harness::{client, post_json, send, until, Gateway},
    support::{redis_server::RedisServer, Answer, Calls},
    upstream::Upstream,
};

const PROMPT: &str = r#"{"model":"o3","messages":[{"role":"user","content":"think hard"}]}"#;

/// An upstream whose first call misbehaves as `first` says, and whose
/// later calls answer at once with JSON naming the call.
async fn first_call(first: First) -> Upstream {
    let calls = Calls::default();
    let router = Router::new()
        .fallback(|State((calls, first)): State<(Calls, First)>| async move {
            let call = calls.inc();
            let answer = format!(r#"{{"call":{call}}}"#);
            if call > 1 {
                return ([("content-type", "application/json")], answer).into_response();
            }
            match first {
                First::Hangs => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    answer.into_response()
                }
                First::StallsMidBody => {
                    let frames =
                        StallAfter(Some(Bytes::from(format!(r#"{{"call":{call},"text":""#))));
                    (
                        [("content-type", "application/json")],
                        Body::new(StreamBody::new(frames)),
                    )
                        .into_response()
                }
            }
        })
        .with_state((calls.clone(), first));
    Upstream::serve(router, calls).await
}

#[derive(Clone, Copy)]
enum First {
    Hangs,
    StallsMidBody,
}

/// A body that sends its first bytes, then nothing, ever.
struct StallAfter(Option<Bytes>);

impl futures_core::Stream for StallAfter {
    type Item = Result<Frame<Bytes>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.0.take() {
            Some(bytes) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
            None => Poll::Pending,
        }
    }
}

fn call_of(answer: &Answer) -> u64 {
    let echo: Value = serde_json::from_slice(&answer.body).expect("a JSON answer");
    echo["call"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_upstream_is_answered_504_within_the_upstream_timeout() {
    let upstream = first_call(First::Hangs).await;
    let gateway = Gateway::start(&["--upstream", &upstream.url(), "--upstream-timeout", "1"]);
    let started = Instant::now();
    let answer = timeout(
        Duration::from_secs(10),
        send(post_json(&gateway.url("/v1/chat/completions"), PROMPT)),
    )
    .await
    .expect("answered before the upstream");
    assert_eq!(answer.status, 504, "{answer:?}");
    assert!(started.elapsed() >= Duration::from_millis(900));
    // Not stored: the next one calls the upstream again.
    let again = send(post_json(&gateway.url("/v1/chat/completions"), PROMPT)).await;
    assert_eq!(again.status, 200);
    assert_eq!(call_of(&again), 2);
}

/// The first call hangs on one gateway; its duplicate on another gateway
/// sharing the Redis gives up waiting after `--wait-timeout` and calls the
/// upstream itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_of_a_hanging_call_is_answered_within_the_wait_timeout() {
    let redis = RedisServer::start();
    let upstream = first_call(First::Hangs).await;
    let url = upstream.url();
    let args = [
        "--upstream",
        &url,
        "--redis",
        &redis.url(),
        "--wait-timeout",
        "1",
    ];
    let gateways = [Gateway::start(&args), Gateway::start(&args)];

    let hanging =
        tokio::spawn(client().request(post_json(&gateways[0].url("/v1/chat/completions"), PROMPT)));
    assert!(
        until(Duration::from_secs(10), || async {
            upstream.calls.get() == 1
        })
        .await,
        "the first call reaches the upstream"
    );
    let started = Instant::now();
    let duplicate = timeout(
        Duration::from_secs(10),
        send(post_json(&gateways[1].url("/v1/chat/completions"), PROMPT)),
    )
    .await
    .expect("the duplicate does not wait for the hanging call");
    assert_eq!(duplicate.status, 200);
    assert_eq!(call_of(&duplicate), 2);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(900), "{waited:?}");
    assert_eq!(gateways[1].stats().await["process"]["wait_timeouts"], 1);
    hanging.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upstream_body_ends_the_response_and_is_not_stored() {
    let upstream = first_call(First::StallsMidBody).await;
    let gateway = Gateway::start(&["--upstream", &upstream.url(), "--idle-timeout", "1"]);

    let started = Instant::now();
    let response = client()
        .request(post_json(&gateway.url("/v1/chat/completions"), PROMPT))
        .await
        .expect("the head arrives");
    assert_eq!(response.status(), 200);
    let read = timeout(Duration::from_secs(10), response.into_body().collect())
        .await
        .expect("the stalled body ends");
    assert!(read.is_err(), "the body ends with an error, not complete");
    assert!(started.elapsed() >= Duration::from_millis(900));

    let again = send(post_json(&gateway.url("/v1/chat/completions"), PROMPT)).await;
    assert_eq!(again.status, 200);
    assert_eq!(call_of(&again), 2, "the stalled answer was not stored");
    assert_eq!(gateway.stats().await["process"]["stored"], 1);
}

/// The same within one gateway: the duplicate follows the hanging call in
/// process, and gives up after `--wait-timeout` too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_in_the_same_gateway_is_answered_within_the_wait_timeout() {
    let upstream = first_call(First::Hangs).await;
    let gateway = Gateway::start(&["--upstream", &upstream.url(), "--wait-timeout", "1"]);

    let hanging =
        tokio::spawn(client().request(post_json(&gateway.url("/v1/chat/completions"), PROMPT)));
    assert!(
        until(Duration::from_secs(10), || async {
            upstream.calls.get() == 1
        })
        .await,
        "the first call reaches the upstream"
    );
    let started = Instant::now();
    let duplicate = timeout(
        Duration::from_secs(10),
        send(post_json(&gateway.url("/v1/chat/completions"), PROMPT)),
    )
    .await
    .expect("the duplicate does not wait for the hanging call");
    assert_eq!(duplicate.status, 200);
    assert_eq!(call_of(&duplicate), 2);
    assert!(started.elapsed() >= Duration::from_millis(900));
    hanging.abort();
}
