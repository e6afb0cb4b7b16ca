//! A lease never outlives its leader: whatever becomes of the call (a panic,
//! a look-up we gave up on, an answer that is not stored), the claim is
//! released at once and waiters elsewhere are told.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::time::timeout;
use tower::Layer;
use tower_idempotency::{IdempotencyLayer, RedisStore};

use crate::{entry_name, instance, key_of, store, support::*};
use redis_server::RedisServer;

/// Waits until `lease` is gone from `server`, for at most `limit`.
async fn lease_gone(server: &RedisServer, lease: &str, limit: Duration) -> bool {
    eventually(limit, || server.cli(&["EXISTS", lease]) == "0").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_leaders_lease_is_released_at_once() {
    let server = RedisServer::start();
    // It panics once the test has seen the lease held.
    let (panicking, calls, gate) = gated(|_| panic!("the upstream handler panicked"));
    let a = instance(store(&server.url())).await;
    let request = post("/", "q");
    let lease = format!("{}:lease", entry_name("", &key_of(&a, &request).await));

    let service = a.layer(panicking);
    let leader = tokio::spawn({
        let request = request.clone();
        async move { fetch(&service, request).await }
    });
    until("the leader called upstream", || calls.get() == 1).await;
    assert_eq!(server.cli(&["EXISTS", &lease]), "1", "the leader holds it");
    gate.notify_one();
    assert!(timeout(Duration::from_secs(5), leader)
        .await
        .unwrap()
        .unwrap_err()
        .is_panic());
    // The lease lasts 10 s; its release must not wait for that.
    assert!(
        lease_gone(&server, &lease, Duration::from_secs(1)).await,
        "the panicking leader's lease is still held: {}",
        server.cli(&["PTTL", &lease])
    );

    // Another instance goes through at once.
    let (inner, calls) = numbered();
    let b = instance(store(&server.url())).await.layer(inner);
    let started = Instant::now();
    let answer = timeout(Duration::from_secs(5), fetch(&b, request))
        .await
        .unwrap();
    assert_eq!((&answer.body[..], calls.get()), (&b"answer #1"[..], 1));
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_look_up_that_timed_out_leaves_no_lease_behind() {
    let server = RedisServer::start();
    let (inner, calls) = numbered();
    let redis = RedisStore::builder(server.url())
        .timeout(Duration::from_millis(50))
        .write_timeout(Duration::from_millis(200))
        .poll_interval(Duration::from_secs(5))
        .lease(Duration::from_secs(10))
        .connect()
        .await
        .unwrap();
    let layer = IdempotencyLayer::builder().redis(redis).build();
    let service = layer.layer(inner);
    // Load the scripts while Redis answers.
    fetch(&service, post("/", "warm-up")).await;
    let request = post("/", "q");
    let lease = format!("{}:lease", entry_name("", &key_of(&layer, &request).await));

    // The look-up reaches Redis, but only after we stopped waiting for it:
    // it claims the lease with a token nobody will use.
    // Paused (SIGSTOP), the server takes the look-up but answers nothing
    // until resumed, after the client gave up on it.
    server.pause();
    let answer = timeout(Duration::from_secs(5), fetch(&service, request))
        .await
        .unwrap();
    assert_eq!((answer.status, calls.get()), (200, 2), "it went through");
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.resume();

    assert!(
        lease_gone(&server, &lease, Duration::from_secs(1)).await,
        "a lease claimed by a look-up we gave up on is still held: {} ms left",
        server.cli(&["PTTL", &lease])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_answer_that_is_not_stored_releases_the_waiters_elsewhere_at_once() {
    const WAITERS: usize = 3;
    const CALL: Duration = Duration::from_millis(400);
    let server = RedisServer::start();
    let finished = Arc::new(Mutex::new(Vec::new()));
    let (failing, calls) = upstream(move |seen: Seen| async move {
        tokio::time::sleep(CALL).await;
        respond(500, format!("failure #{}", seen.call))
    });
    let a = instance(store(&server.url())).await.layer(failing.clone());
    let mut others = Vec::new();
    for _ in 0..WAITERS {
        others.push(instance(store(&server.url())).await.layer(failing.clone()));
    }

    let started = Instant::now();
    let leader = tokio::spawn(async move { fetch(&a, post("/", "q")).await });
    // The leader holds the lease; the others wait for it on Redis.
    until("the leader called upstream", || calls.get() == 1).await;
    let mut waiters = Vec::new();
    for service in others {
        let finished = Arc::clone(&finished);
        waiters.push(tokio::spawn(async move {
            let answer = fetch(&service, post("/", "q")).await;
            finished.lock().unwrap().push(started.elapsed());
            answer
        }));
    }
    let first = timeout(Duration::from_secs(10), leader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((first.status, &first.body[..]), (500, &b"failure #1"[..]));
    for waiter in waiters {
        let answer = timeout(Duration::from_secs(10), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(answer.status, 500);
        assert_ne!(&answer.body[..], b"failure #1", "a failure is not shared");
    }

    assert_eq!(calls.get(), 1 + WAITERS, "each waiter went through itself");
    // Together, not one after another behind a lease: all within one more
    // call after the leader's (serialised, the last would need three).
    let last = finished.lock().unwrap().iter().copied().max().unwrap();
    eprintln!(
        "the last of {WAITERS} waiters answered {last:?} after the start (calls take {CALL:?})"
    );
    assert!(
        last < CALL * 2 + Duration::from_millis(300),
        "the last waiter answered {last:?} after the start (calls take {CALL:?})"
    );
}

/// A head that says the answer will not be stored (here `private`) lets the
/// waiters elsewhere go at once, not when the leader's long body ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiters_elsewhere_go_as_soon_as_the_head_says_the_answer_will_not_be_stored() {
    const WAITERS: usize = 3;
    const PART: Duration = Duration::from_millis(500);
    let server = RedisServer::start();
    let (slow, calls) = upstream(|seen: Seen| async move {
        let (feed, body) = channel_body();
        tokio::spawn(async move {
            for part in 0..3 {
                tokio::time::sleep(PART).await;
                feed.data(format!("part {part} "));
            }
        });
        let mut response = http::Response::new(body.boxed());
        response
            .headers_mut()
            .insert("cache-control", http::HeaderValue::from_static("private"));
        response.headers_mut().insert(
            "x-call",
            http::HeaderValue::from_str(&seen.call.to_string()).unwrap(),
        );
        response
    });
    let a = instance(store(&server.url())).await.layer(slow.clone());
    let leader = tokio::spawn(async move { fetch(&a, post("/", "q")).await });
    assert!(eventually(Duration::from_secs(5), || calls.get() == 1).await);
    let mut waiters = Vec::new();
    for _ in 0..WAITERS {
        let service = instance(store(&server.url())).await.layer(slow.clone());
        waiters.push(tokio::spawn(async move {
            fetch(&service, post("/", "q")).await
        }));
    }
    // The leader's body takes three parts; the waiters call long before.
    assert!(
        eventually(PART * 2, || calls.get() == 1 + WAITERS).await,
        "{} calls while the leader's body was still streaming",
        calls.get()
    );
    let first = timeout(Duration::from_secs(10), leader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.header("x-call"), Some("1"));
    for waiter in waiters {
        let answer = timeout(Duration::from_secs(10), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_ne!(
            answer.header("x-call"),
            Some("1"),
            "a private answer is not shared"
        );
        assert_eq!(&answer.body[..], b"part 0 part 1 part 2 ");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leases_never_outlive_their_leaders_over_many_rounds() {
    const ROUNDS: usize = 240;
    const AT_ONCE: usize = 24;
    let server = RedisServer::start();
    // What the upstream does depends on the round: answer, fail, panic, or
    // answer slowly to a caller that hangs up.
    let (inner, _) = upstream(|seen: Seen| async move {
        let round: usize = std::str::from_utf8(&seen.body).unwrap().parse().unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        match round % 4 {
            0 => respond(200, format!("round {round}")),
            1 => respond(500, format!("round {round} failed")),
            2 => panic!("round {round} panicked"),
            _ => {
                tokio::time::sleep(Duration::from_millis(30)).await;
                respond(200, format!("round {round}"))
            }
        }
    });
    let a = instance(store(&server.url())).await.layer(inner.clone());
    let b = instance(store(&server.url())).await.layer(inner);
    let slowest = Arc::new(Mutex::new(Duration::ZERO));
    for batch in (0..ROUNDS).collect::<Vec<_>>().chunks(AT_ONCE) {
        let mut waiters = Vec::new();
        for &round in batch {
            let body: &'static str = Box::leak(round.to_string().into_boxed_str());
            let leader = tokio::spawn({
                let a = a.clone();
                async move { fetch(&a, post("/", body)).await }
            });
            if round % 4 == 3 {
                // The leader's caller hangs up; its call goes on.
                tokio::time::sleep(Duration::from_millis(5)).await;
                leader.abort();
            }
            let b = b.clone();
            let slowest = Arc::clone(&slowest);
            waiters.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                let started = Instant::now();
                // A waiter of a panicking round panics in turn when it goes
                // through itself: what matters is that it is not stuck.
                let waited = tokio::spawn(async move { fetch(&b, post("/", body)).await });
                let done = timeout(Duration::from_secs(3), waited).await;
                let took = started.elapsed();
                let mut slowest = slowest.lock().unwrap();
                *slowest = (*slowest).max(took);
                assert!(done.is_ok(), "round {round}: the waiter was stuck");
            }));
        }
        for waiter in waiters {
            waiter.await.unwrap();
        }
    }
    let leases = || server.cli(&["--scan", "--pattern", "tidem:*:lease"]);
    eventually(Duration::from_secs(1), || leases().is_empty()).await;
    let left = leases();
    assert!(left.is_empty(), "leases left behind: {left}");
    eprintln!("slowest waiter: {:?}", slowest.lock().unwrap());
}

/// A call that held no lease (a client's `no-cache` refresh) and failed
/// tells nobody to stop waiting: waiters elsewhere wait on the lease
/// holder's call, and get its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_call_without_a_lease_does_not_release_anothers_waiters() {
    let server = RedisServer::start();
    let (inner, calls) = upstream(|seen: Seen| async move {
        if seen.head.headers.contains_key("x-fail") {
            return respond(500, "failed at once");
        }
        tokio::time::sleep(Duration::from_millis(600)).await;
        respond(200, format!("answer #{}", seen.call))
    });
    let leader = instance(store(&server.url())).await.layer(inner.clone());
    let waiter = instance(store(&server.url())).await.layer(inner.clone());
    let refresher = IdempotencyLayer::builder()
        .redis(store(&server.url()).connect().await.unwrap())
        .build()
        .layer(inner);

    let led = tokio::spawn(async move { fetch(&leader, post("/", "q")).await });
    assert!(eventually(Duration::from_secs(5), || calls.get() == 1).await);
    let waited = tokio::spawn(async move { fetch(&waiter, post("/", "q")).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut refresh = post("/", "q");
    refresh
        .headers_mut()
        .insert("cache-control", http::HeaderValue::from_static("no-cache"));
    refresh
        .headers_mut()
        .insert("x-fail", http::HeaderValue::from_static("1"));
    assert_eq!(fetch(&refresher, refresh).await.status, 500);

    let led = timeout(Duration::from_secs(10), led)
        .await
        .unwrap()
        .unwrap();
    let waited = timeout(Duration::from_secs(10), waited)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(led.body, "answer #1");
    assert_eq!(
        waited.body, "answer #1",
        "the waiter got the lease holder's answer"
    );
    assert_eq!(
        calls.get(),
        2,
        "the leader's call and the refresh, nothing else"
    );
}
