//! Adversarial checks of the flight and key rules: who else may receive an
//! answer, what waits without a deadline, what holds the recording budget.

use std::{sync::Arc, time::Duration};

use http::{HeaderValue, Response};
use http_body_util::BodyExt;
use tokio::time::timeout;
use tower::{Layer, ServiceExt};
use tower_idempotency::IdempotencyLayer;

use crate::support::*;

const PATIENCE: Duration = Duration::from_secs(10);

/// An upstream whose first call answers with a body the test feeds; later
/// calls answer `later #n` at once.
fn fed_once(
    head: impl Fn() -> http::response::Builder + Clone + Send + Sync + 'static,
) -> (impl TestService, Calls, Feed) {
    let (feed, body) = channel_body();
    let body = Arc::new(std::sync::Mutex::new(Some(body)));
    let (inner, calls) = upstream(move |seen: Seen| {
        let body = body.lock().unwrap().take();
        let head = head.clone();
        async move {
            match body {
                Some(body) => head().body(body.boxed()).unwrap(),
                None => head().body(full(format!("later #{}", seen.call))).unwrap(),
            }
        }
    });
    (inner, calls, feed)
}

/// A follower that holds its response and never reads it (a client whose
/// connection stalls) must not stall the leader's own caller forever once
/// the response is too large to record: the leader's body task waits for
/// readers to make room, and that wait has no deadline.
#[tokio::test]
async fn a_follower_that_never_reads_cannot_stall_the_leader_forever() {
    tokio::time::pause();
    let (inner, _calls, feed) = fed_once(Response::builder);
    let layer = IdempotencyLayer::builder()
        .max_response_body(1_000)
        .idle_timeout(Duration::from_secs(1))
        .build();
    let service = layer.layer(inner);
    let leader = service.clone().oneshot(post("/", "q")).await.unwrap();
    // Joins the live flight, then never reads.
    let stalled = service.clone().oneshot(post("/", "q")).await.unwrap();
    assert!(stalled
        .headers()
        .get("cache-status")
        .is_some_and(|v| v.to_str().unwrap().ends_with("collapsed")));
    for _ in 0..5 {
        feed.data(vec![b'x'; 600]);
    }
    drop(feed);
    // Every chunk came at once: the upstream is never idle. The leader's
    // caller reads as fast as it can.
    let read = timeout(Duration::from_secs(60), async move {
        let mut body = leader.into_body();
        let mut got = 0;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => got += frame.into_data().map_or(0, |d| d.len()),
                Err(_) => return Err(got),
            }
        }
        Ok(got)
    })
    .await;
    assert_eq!(read, Ok(Ok(3_000)), "the leader's caller was stalled");
    // The reader that held the others back is told, never handed a body
    // cut short as if it were whole.
    let stalled = timeout(PATIENCE, stalled.into_body().collect()).await;
    assert!(matches!(stalled, Ok(Err(_))));
}

/// `Cache-Control: private` in a header line that also holds a non-UTF-8
/// byte (obs-text in a quoted extension) is skipped whole when the
/// directives are read: the response is stored and replayed.
#[tokio::test]
async fn private_in_a_non_utf8_cache_control_line_still_forbids_storing() {
    let (inner, calls) = upstream(|seen: Seen| async move {
        Response::builder()
            .header("cache-control", "max-age=60")
            .header(
                "cache-control",
                HeaderValue::from_bytes(b"private, ext=\"caf\xe9\"").unwrap(),
            )
            .body(full(format!("secret #{}", seen.call)))
            .unwrap()
    });
    let service = IdempotencyLayer::new().layer(inner);
    let first = fetch(&service, post("/", "q")).await;
    let second = fetch(&service, post("/", "q")).await;
    assert_eq!(&first.body[..], b"secret #1");
    assert_eq!(
        &second.body[..],
        b"secret #2",
        "a private answer was replayed"
    );
    assert_eq!(calls.get(), 2);
}

/// A response whose `Connection` names `Vary` (it is dropped from what is
/// stored) must still be replayed only to requests with the leader's values:
/// the stored headers lose `Vary`, and the replay check reads them.
#[tokio::test]
async fn a_vary_that_connection_names_still_guards_replays() {
    let (inner, calls) = upstream(|seen: Seen| async move {
        let origin = seen.head.headers["origin"].to_str().unwrap().to_owned();
        Response::builder()
            .header("vary", "origin")
            .header("connection", "vary")
            .body(full(format!("for {origin} #{}", seen.call)))
            .unwrap()
    });
    let service = IdempotencyLayer::new().layer(inner);
    let with = |origin: &'static str| {
        let mut request = post("/", "q");
        request
            .headers_mut()
            .insert("origin", HeaderValue::from_static(origin));
        request
    };
    let a = fetch(&service, with("https://a.example")).await;
    let b = fetch(&service, with("https://b.example")).await;
    assert_eq!(&a.body[..], b"for https://a.example #1");
    assert_eq!(
        &b.body[..],
        b"for https://b.example #2",
        "a's answer reached b"
    );
    assert_eq!(calls.get(), 2);
}

/// A response that will never be stored (here `private`) must not hold the
/// recording budget while it streams: it starves the responses that would
/// be stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_answer_that_will_not_be_stored_takes_nothing_from_the_recording_budget() {
    let (feed, body) = channel_body();
    let body = Arc::new(std::sync::Mutex::new(Some(body)));
    let (inner, calls) = upstream(move |seen: Seen| {
        let body = body.lock().unwrap().take();
        async move {
            if &seen.body[..] == b"private" {
                let body = body.expect("one private call");
                Response::builder()
                    .header("cache-control", "private")
                    .body(body.boxed())
                    .unwrap()
            } else {
                respond(200, vec![b'p'; 20_000])
            }
        }
    });
    let layer = IdempotencyLayer::builder()
        .max_recording_bytes(64_000)
        .build();
    let service = layer.layer(inner);
    let private = service.clone().oneshot(post("/", "private")).await.unwrap();
    feed.data(vec![b's'; 60_000]);
    // The chunk is through the recording once the caller can read it.
    let mut private = private.into_body();
    assert_eq!(
        timeout(PATIENCE, next_data(&mut private))
            .await
            .unwrap()
            .unwrap()
            .len(),
        60_000
    );
    let used_by_private = layer.recording_bytes();
    let public = fetch(&service, post("/", "public")).await;
    let again = fetch(&service, post("/", "public")).await;
    drop(feed);
    assert!(timeout(PATIENCE, private.collect()).await.unwrap().is_ok());
    assert_eq!(used_by_private, 0, "the private answer held the budget");
    assert!(
        public.cache_status().ends_with("stored"),
        "{}",
        public.cache_status()
    );
    assert!(
        again.cache_status().contains("hit"),
        "{}",
        again.cache_status()
    );
    assert_eq!(calls.get(), 2);
}

/// A response limit of zero stores nothing, but every answer still streams
/// whole to its caller: the leader's body task waits for its readers to hold
/// less than the limit, which zero bytes never are.
#[tokio::test]
async fn a_zero_response_limit_streams_answers_whole_without_storing_them() {
    tokio::time::pause();
    let (inner, calls) = upstream(|_seen: Seen| async move {
        let (feed, body) = channel_body();
        (0..3).for_each(|_| feed.data("abc"));
        Response::new(body.boxed())
    });
    let layer = IdempotencyLayer::builder().max_response_body(0).build();
    let service = layer.layer(inner);
    for _ in 0..2 {
        let answer = timeout(Duration::from_secs(1), fetch(&service, post("/", "q")))
            .await
            .expect("the answer stalled");
        assert_eq!(&answer.body[..], b"abcabcabc");
    }
    assert_eq!(calls.get(), 2);
}

/// Private answers race their followers: whenever a duplicate arrives
/// (before the head, as it is published, while it streams, after the end),
/// it never gets an answer made for another caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_private_answer_never_reaches_another_caller_whenever_it_arrives() {
    for round in 0..300u64 {
        let (inner, _calls) = upstream(|seen: Seen| async move {
            for _ in 0..(seen.call % 3) {
                tokio::task::yield_now().await;
            }
            let user = seen.head.headers["x-user"].to_str().unwrap().to_owned();
            let (feed, body) = channel_body();
            feed.data(format!("for {user}"));
            feed.data(" only");
            Response::builder()
                .header("cache-control", "private")
                .body(body.boxed())
                .unwrap()
        });
        let service = IdempotencyLayer::new().layer(inner);
        let tasks: Vec<_> = (0..4u64)
            .map(|user| {
                let service = service.clone();
                tokio::spawn(async move {
                    for _ in 0..((user + round) % 4) {
                        tokio::task::yield_now().await;
                    }
                    let mut request = post("/", "q");
                    request
                        .headers_mut()
                        .insert("x-user", HeaderValue::from(user));
                    (user, fetch(&service, request).await)
                })
            })
            .collect();
        for task in tasks {
            let (user, answer) = timeout(PATIENCE, task).await.unwrap().unwrap();
            assert_eq!(answer.body, format!("for {user} only"), "round {round}");
        }
    }
}

/// Readers come and go, some never read, bodies outgrow the limit and the
/// budget: once every flight is over, the whole budget is back and no flight
/// is left in the map.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_budget_and_the_map_are_whole_again_after_readers_drop_stall_and_overflow() {
    let (inner, _calls) = upstream(|seen: Seen| async move {
        let (feed, body) = channel_body();
        let chunks = seen.body.len() % 7 + 1;
        tokio::spawn(async move {
            for _ in 0..chunks {
                feed.data(vec![b'z'; 400]);
                tokio::task::yield_now().await;
            }
        });
        Response::new(body.boxed())
    });
    let layer = IdempotencyLayer::builder()
        .max_response_body(1_000)
        .max_recording_bytes(3_000)
        .idle_timeout(Duration::from_millis(20))
        .build();
    let service = layer.layer(inner);
    let tasks: Vec<_> = (0..300usize)
        .map(|i| {
            let service = service.clone();
            let body: &'static str = Box::leak("q".repeat(i % 7 + 1).into_boxed_str());
            tokio::spawn(async move {
                let response = service.oneshot(post("/", body)).await.unwrap();
                match i % 3 {
                    // Reads it all.
                    0 => {
                        let _ = response.into_body().collect().await;
                    }
                    // Goes away at once.
                    1 => drop(response),
                    // Holds it a while without reading, then goes away.
                    _ => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        drop(response);
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        timeout(PATIENCE, task).await.unwrap().unwrap();
    }
    assert!(eventually(PATIENCE, || layer.in_flight() == 0).await);
    assert_eq!(layer.recording_bytes(), 0);
}

/// With the control headers on, a request's `x-idempotency-namespace` picks
/// the namespace its entry is stored under: `key_for` on that request's
/// head must name that entry, so that `purge_in` forgets it.
#[tokio::test]
async fn key_for_names_the_entry_of_a_request_that_chose_its_namespace() {
    let (inner, calls) = numbered();
    let layer = IdempotencyLayer::builder().control_headers(true).build();
    let service = layer.clone().layer(inner);
    let request = || {
        let mut request = post("/v1/chat", "{}");
        request.headers_mut().insert(
            "x-idempotency-namespace",
            HeaderValue::from_static("tenant-1"),
        );
        request
    };
    let stored = service.clone().oneshot(request()).await.unwrap();
    let stored_under = *stored.extensions().get::<tower_idempotency::Key>().unwrap();
    let (head, _) = request().into_parts();
    assert_eq!(layer.key_for(&head, b"{}"), Some(stored_under));
    layer.purge_in("tenant-1", &stored_under).await;
    fetch(&service, request()).await;
    assert_eq!(calls.get(), 2);
}

/// In `Idempotency-Key` mode the key decides, the docs say, and a
/// `no-store` answer is shared with concurrent retries; but it is not
/// stored, so a retry sent after it ended executes the request again, and
/// the same key with another payload is not refused. Payment-style APIs mark
/// every answer `no-store`.
#[tokio::test]
async fn a_retry_after_a_no_store_answer_under_the_same_idempotency_key_is_not_executed_again() {
    let (inner, calls) = upstream(|seen: Seen| async move {
        Response::builder()
            .header("cache-control", "no-store")
            .body(full(format!("charged #{}", seen.call)))
            .unwrap()
    });
    let service = IdempotencyLayer::builder()
        .idempotency_key_header(tower_idempotency::KeyHeader::Required)
        .build()
        .layer(inner);
    let keyed = |body: &'static str| {
        let mut request = post("/v1/charges", body);
        request
            .headers_mut()
            .insert("idempotency-key", HeaderValue::from_static("k-1"));
        request
    };
    let first = fetch(&service, keyed("amount=10")).await;
    let retry = fetch(&service, keyed("amount=10")).await;
    assert_eq!(&first.body[..], b"charged #1");
    assert_eq!(retry.body, first.body, "the retry was executed again");
    let other = fetch(&service, keyed("amount=99")).await;
    assert_eq!(other.status, 422);
    assert_eq!(calls.get(), 1);
}

/// `stored` is a promise, but a full in-process cache refuses new entries
/// its admission policy finds colder than those it holds (moka's TinyLFU):
/// a response said `stored` is then not kept at all.
#[tokio::test]
async fn an_answer_promised_as_stored_is_kept_even_when_the_cache_is_full() {
    let (inner, _calls) =
        upstream(|seen: Seen| async move { respond(200, vec![b'x'; 500 + seen.body.len()]) });
    let layer = IdempotencyLayer::builder().l1_capacity(4_000).build();
    let service = layer.clone().layer(inner);
    // Fill the cache with entries read often.
    for body in ["a", "bb", "ccc", "dddd", "eeeee"] {
        for _ in 0..5 {
            fetch(&service, post("/", body)).await;
        }
    }
    let mut broken = Vec::new();
    for body in ["f", "gg", "hhh", "iiii", "jjjjj", "kkkkkk"] {
        let first = fetch(&service, post("/", body)).await;
        // Let the cache run its admission and eviction.
        let _ = layer.l1_usage().await;
        let again = fetch(&service, post("/", body)).await;
        if first.cache_status().ends_with("stored") && !again.cache_status().contains("hit") {
            broken.push(body);
        }
    }
    assert_eq!(
        broken,
        Vec::<&str>::new(),
        "promised as stored, then not found"
    );
}
