//! Exactly one upstream call among concurrent duplicates, and no one left
//! waiting when the leader fails.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tokio::{sync::Notify, time::timeout};
use tower::{Layer, ServiceExt};
use tower_idempotency::{IdempotencyLayer, RequestBody};

use crate::support::*;

const PATIENCE: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_duplicates_make_one_call() {
    let gate = Arc::new(Notify::new());
    let release = Arc::clone(&gate);
    let (inner, calls) = upstream(move |seen: Seen| {
        let gate = Arc::clone(&gate);
        async move {
            gate.notified().await;
            respond(
                200,
                format!("{{\"answer\":{},\"n\":{}}}", seen.body.len(), seen.call),
            )
        }
    });
    let layer = IdempotencyLayer::new();
    let service = tower::ServiceBuilder::new()
        .layer(layer.clone())
        .service(inner);

    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let service = service.clone();
            tokio::spawn(
                async move { fetch(&service, post("/v1/chat", r#"{"prompt":"hi"}"#)).await },
            )
        })
        .collect();
    // Let every request reach the layer before the upstream answers.
    until("every request reached the layer", || {
        layer.stats().requests == 100
    })
    .await;
    // From there to its flight a request does a few microseconds of work
    // that nothing outside the crate can see (no clock to pause on this
    // multi-threaded runtime): a margin, not an ordering.
    tokio::time::sleep(Duration::from_millis(20)).await;
    release.notify_one();

    let mut answers = Vec::new();
    for task in tasks {
        answers.push(timeout(PATIENCE, task).await.unwrap().unwrap());
    }
    assert_eq!(calls.get(), 1);
    assert!(answers
        .iter()
        .all(|a| a.status == 200 && a.body == answers[0].body));
    assert_eq!(&answers[0].body[..], br#"{"answer":15,"n":1}"#);
    let leaders = answers
        .iter()
        .filter(|a| a.cache_status().contains("stored"))
        .count();
    let followers = answers
        .iter()
        .filter(|a| a.cache_status().ends_with("collapsed"))
        .count();
    assert_eq!((leaders, followers), (1, 99));

    let stats = layer.stats();
    assert_eq!(
        (
            stats.requests,
            stats.misses,
            stats.coalesced,
            stats.upstream_calls
        ),
        (100, 1, 99, 1)
    );
    assert_eq!(layer.in_flight(), 0);
}

/// An upstream whose single response body the test feeds by hand.
fn fed_upstream() -> (impl TestService, Calls, Feed) {
    let (feed, body) = channel_body();
    let body = Arc::new(std::sync::Mutex::new(Some(body)));
    let (service, calls) = upstream(move |_seen: Seen| {
        let body = body
            .lock()
            .unwrap()
            .take()
            .expect("only one call reaches the upstream");
        async move { Response::new(body.boxed()) }
    });
    (service, calls, feed)
}

#[tokio::test]
async fn follower_streams_the_leaders_chunks_live() {
    let (inner, calls, feed) = fed_upstream();
    let service = IdempotencyLayer::new().layer(inner);

    let leader = service
        .clone()
        .oneshot(post("/stream", "same"))
        .await
        .unwrap();
    let follower_task = tokio::spawn({
        let service = service.clone();
        async move { service.oneshot(post("/stream", "same")).await.unwrap() }
    });
    feed.data("first chunk;");
    let follower = timeout(PATIENCE, follower_task).await.unwrap().unwrap();
    assert!(follower.headers()["cache-status"]
        .to_str()
        .unwrap()
        .ends_with("collapsed"));

    let mut leader_body = leader.into_body();
    let mut follower_body = follower.into_body();
    // The last chunk has not been produced yet: the first must arrive anyway.
    let first = timeout(PATIENCE, next_data(&mut follower_body))
        .await
        .unwrap();
    assert_eq!(first.as_deref(), Some(&b"first chunk;"[..]));
    assert_eq!(
        next_data(&mut leader_body).await.as_deref(),
        Some(&b"first chunk;"[..])
    );

    // A late joiner first gets the chunks so far, then the rest.
    let late = service
        .clone()
        .oneshot(post("/stream", "same"))
        .await
        .unwrap();
    feed.data("last chunk");
    drop(feed);
    let late = Answer::read(late).await;
    assert_eq!(&late.body[..], b"first chunk;last chunk");
    assert_eq!(
        next_data(&mut follower_body).await.as_deref(),
        Some(&b"last chunk"[..])
    );
    assert_eq!(
        next_data(&mut leader_body).await.as_deref(),
        Some(&b"last chunk"[..])
    );
    assert_eq!(calls.get(), 1);
}

#[tokio::test]
async fn leader_dropped_mid_flight_still_completes_and_stores() {
    let (inner, calls, feed) = fed_upstream();
    let layer = IdempotencyLayer::new();
    let service = layer.layer(inner);

    // The caller goes away while the upstream is still streaming.
    let leader = service.clone().oneshot(post("/paid", "x")).await.unwrap();
    feed.data("half ");
    drop(leader);
    feed.data("and the rest");
    drop(feed);

    // The call was paid for: it completes and the next request is a hit.
    until("the flight is over", || layer.in_flight() == 0).await;
    let answer = timeout(PATIENCE, fetch(&service, post("/paid", "x")))
        .await
        .unwrap();
    assert_eq!(&answer.body[..], b"half and the rest");
    assert!(answer.cache_status().starts_with("tower-idempotency; hit"));
    assert_eq!(calls.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn leader_future_dropped_before_the_call_hands_over() {
    let (inner, calls, gate) = gated(|seen: &Seen| respond(200, format!("call {}", seen.call)));
    let service = IdempotencyLayer::new().layer(inner);
    let leader = tokio::spawn({
        let service = service.clone();
        async move { fetch(&service, post("/", "q")).await }
    });
    until("the leader called upstream", || calls.get() == 1).await;
    let follower = tokio::spawn({
        let service = service.clone();
        async move { fetch(&service, post("/", "q")).await }
    });
    // The follower joins the flight.
    settle().await;
    // The leader's caller goes away before any response head: the upstream
    // call was already made and goes on; its answer reaches the follower.
    leader.abort();
    gate.notify_one();
    let answer = timeout(PATIENCE, follower).await.unwrap().unwrap();
    assert_eq!(&answer.body[..], b"call 1");
    assert_eq!(calls.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn leader_error_sends_each_follower_through_itself() {
    let gate = Arc::new(Notify::new());
    let calls = Calls::default();
    let counter = calls.clone();
    let inner = tower::service_fn({
        let gate = Arc::clone(&gate);
        move |_: Request<RequestBody<Full<Bytes>>>| {
            let gate = Arc::clone(&gate);
            let n = counter.inc();
            async move {
                if n == 1 {
                    gate.notified().await;
                    return Err(std::io::Error::other("upstream refused"));
                }
                Ok(respond(200, format!("served by call {n}")))
            }
        }
    });
    let service = IdempotencyLayer::new().layer(inner);
    let spawn = || {
        let service = service.clone();
        tokio::spawn(async move { service.oneshot(post("/", "q")).await })
    };
    let leader = spawn();
    until("the leader called upstream", || calls.get() == 1).await;
    let followers: Vec<_> = (0..10).map(|_| spawn()).collect();
    // The followers join the flight.
    settle().await;
    gate.notify_one();

    let err = timeout(PATIENCE, leader)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(err.to_string(), "upstream refused");
    let mut served = Vec::new();
    for follower in followers {
        let response = timeout(PATIENCE, follower).await.unwrap().unwrap().unwrap();
        let answer = Answer::read(response).await;
        served.push(String::from_utf8(answer.body.to_vec()).unwrap());
    }
    // Each follower went through itself at once, as it would have without
    // the layer (a serial re-election would make a failing upstream cost
    // each follower one more failure): no one waits on another's retry.
    served.sort();
    let mut expected: Vec<_> = (2..=11).map(|n| format!("served by call {n}")).collect();
    expected.sort();
    assert_eq!(served, expected);
    assert_eq!(calls.get(), 11);
}

#[tokio::test(start_paused = true)]
async fn leader_panic_hands_the_call_to_a_follower() {
    let gate = Arc::new(Notify::new());
    let (inner, calls) = upstream({
        let gate = Arc::clone(&gate);
        move |seen: Seen| {
            let gate = Arc::clone(&gate);
            async move {
                if seen.call == 1 {
                    gate.notified().await;
                    panic!("the inner service panicked");
                }
                respond(200, format!("served by call {}", seen.call))
            }
        }
    });
    let service = IdempotencyLayer::new().layer(inner);
    let leader = tokio::spawn({
        let service = service.clone();
        async move { fetch(&service, post("/", "q")).await }
    });
    until("the leader called upstream", || calls.get() == 1).await;
    let follower = tokio::spawn({
        let service = service.clone();
        async move { fetch(&service, post("/", "q")).await }
    });
    // The follower joins the flight.
    settle().await;
    gate.notify_one();

    // The leader's caller sees the panic, as it would without the layer.
    let leader = timeout(PATIENCE, leader).await.unwrap();
    assert!(leader.unwrap_err().is_panic());
    let answer = timeout(PATIENCE, follower).await.unwrap().unwrap();
    assert_eq!(&answer.body[..], b"served by call 2");
    assert_eq!(calls.get(), 2);
}

#[tokio::test]
async fn upstream_body_failure_reaches_every_reader_and_is_not_stored() {
    let (inner, calls, feed) = fed_upstream();
    let service = IdempotencyLayer::new().layer(inner);
    let leader = service.clone().oneshot(post("/", "q")).await.unwrap();
    let follower = service.clone().oneshot(post("/", "q")).await.unwrap();
    feed.data("partial");
    feed.fail();

    for response in [leader, follower] {
        let mut body = response.into_body();
        assert_eq!(next_data(&mut body).await.as_deref(), Some(&b"partial"[..]));
        let error = timeout(PATIENCE, body.frame())
            .await
            .unwrap()
            .unwrap()
            .unwrap_err();
        assert!(error.to_string().contains("upstream reset"), "{error}");
    }
    assert_eq!(calls.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn uncacheable_answer_is_shared_by_concurrent_followers_but_never_replayed_later() {
    let (inner, calls, gate) =
        gated(|seen: &Seen| respond(503, format!("overloaded #{}", seen.call)));
    let service = IdempotencyLayer::new().layer(inner);
    let tasks: Vec<_> = (0..5)
        .map(|_| {
            let service = service.clone();
            tokio::spawn(async move { fetch(&service, post("/", "q")).await })
        })
        .collect();
    until("the leader called upstream", || calls.get() == 1).await;
    // The others join its flight.
    settle().await;
    gate.notify_one();
    for task in tasks {
        let answer = timeout(PATIENCE, task).await.unwrap().unwrap();
        assert_eq!(
            (answer.status, &answer.body[..]),
            (503, &b"overloaded #1"[..])
        );
    }
    assert_eq!(calls.get(), 1);

    let later = fetch(&service, post("/", "q")).await;
    assert_eq!(&later.body[..], b"overloaded #2");
    assert_eq!(later.cache_status(), "tower-idempotency; fwd=uri-miss");
    assert_eq!(calls.get(), 2);
}

#[tokio::test]
async fn distinct_requests_are_distinct_calls() {
    let (inner, calls) = numbered();
    let service = IdempotencyLayer::new().layer(inner);
    let with_auth = |token: &str| {
        Request::post("/v1/chat")
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(Bytes::from_static(b"same prompt")))
            .unwrap()
    };
    let a = fetch(&service, with_auth("tenant-a")).await;
    let b = fetch(&service, with_auth("tenant-b")).await;
    assert_ne!(a.body, b.body, "two tenants must never share an answer");
    fetch(&service, post("/v1/chat", "prompt one")).await;
    fetch(&service, post("/v1/chat", "prompt two")).await;
    assert_eq!(calls.get(), 4);
    assert_eq!(fetch(&service, with_auth("tenant-a")).await.body, a.body);
    assert_eq!(calls.get(), 4);
}

#[tokio::test]
async fn reordered_json_keys_share_an_entry() {
    let (inner, calls) = numbered();
    let service = IdempotencyLayer::new().layer(inner);
    let json = |body: &'static str| {
        Request::post("/v1/chat")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    };
    let a = fetch(
        &service,
        json(r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#),
    )
    .await;
    let b = fetch(&service, json("{\n  \"messages\": [{\"content\": \"hi\", \"role\": \"user\"}],\n  \"model\": \"m\"\n}")).await;
    assert_eq!(a.body, b.body);
    assert_eq!(calls.get(), 1);
    let c = fetch(
        &service,
        json(r#"{"model":"m","messages":[{"role":"user","content":"hi!"}]}"#),
    )
    .await;
    assert_ne!(a.body, c.body);
    assert_eq!(calls.get(), 2);
}

#[tokio::test]
async fn idle_layer_holds_no_flights() {
    let (inner, _) = numbered();
    let layer = IdempotencyLayer::new();
    let service = layer.layer(inner);
    let _ = BodyExt::collect(service.oneshot(post("/", "x")).await.unwrap().into_body()).await;
    assert_eq!(layer.in_flight(), 0);
}
