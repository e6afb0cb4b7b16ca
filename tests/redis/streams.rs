//! Live streams across instances: a duplicate on another instance gets the
//! leader's chunks as they arrive, byte for byte, and never a truncated
//! body passed off as complete.

use std::{
    ops::Range,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderMap, Response};
use http_body_util::BodyExt;
use tokio::{task::JoinHandle, time::timeout};
use tower::{Layer, ServiceExt};
use tower_idempotency::{Idempotency, IdempotencyLayer, RedisStoreBuilder, ResponseBody};

use crate::{stream_support::*, support::*};
use redis_server::{RedisCluster, RedisServer};

/// A store on `url` with streams on, and waits that only a notification
/// can cut short (see `crate::store`).
fn store(url: &str) -> RedisStoreBuilder {
    crate::store(url).streams(true)
}

async fn instance(redis: RedisStoreBuilder) -> IdempotencyLayer {
    crate::instance(redis).await
}

/// An upstream streaming what the test feeds (see `streaming`), behind A
/// and behind B: both services, its calls and the feed.
fn streaming_on(
    a: &IdempotencyLayer,
    b: &IdempotencyLayer,
    headers: &'static [(&'static str, &'static str)],
) -> (
    Idempotency<impl TestService>,
    Idempotency<impl TestService>,
    Calls,
    Feed,
) {
    let (inner, calls, feed) = streaming(headers);
    (a.layer(inner.clone()), b.layer(inner), calls, feed)
}

/// Sends the test's request through `service` and returns the response
/// with its body still streaming.
async fn open<S: TestService>(service: &Idempotency<S>) -> Response<ResponseBody<TestBody>> {
    let request = post("/v1/chat", "stream me");
    timeout(PATIENCE, service.clone().oneshot(request))
        .await
        .expect("a response head in time")
        .unwrap()
}

/// A leader opens on `service_a` and its upstream sends `chunk`; a
/// duplicate on `service_b` follows it. Returns the leader's response, the
/// follower's body and the first chunk the follower got.
async fn follow<S: TestService, T: TestService>(
    service_a: &Idempotency<S>,
    service_b: &Idempotency<T>,
    feed: &Feed,
    chunk: &'static str,
) -> (
    Response<ResponseBody<TestBody>>,
    ResponseBody<TestBody>,
    Bytes,
) {
    let leader = open(service_a).await;
    feed.data(chunk);
    let mut follower = open(service_b).await.into_body();
    let first = next_chunk(&mut follower).await;
    (leader, follower, first)
}

/// Reads the rest of a body: its bytes and trailers, or the error it ended with.
async fn rest<B>(mut body: B, mut so_far: Vec<u8>) -> Result<(Bytes, Option<HeaderMap>), String>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    let mut trailers = None;
    loop {
        match timeout(PATIENCE, body.frame())
            .await
            .expect("the body ends in time")
        {
            None => return Ok((Bytes::from(so_far), trailers)),
            Some(Err(error)) => return Err(format!("{error:?}")),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => so_far.extend_from_slice(&data),
                Err(frame) => trailers = frame.into_trailers().ok(),
            },
        }
    }
}

/// Reads a response's whole body, which must complete.
async fn whole<B>(response: Response<B>) -> Bytes
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    let (body, _) = rest(response.into_body(), Vec::new()).await.unwrap();
    body
}

/// Reads the rest of a follower's body, after `first`, and asserts it ends
/// with an error: never a truncated body passed off as complete.
async fn ends_with_an_error(follower: ResponseBody<TestBody>, first: &Bytes) {
    let followed = rest(follower, first.to_vec()).await;
    assert!(followed.is_err(), "a truncated body passed off as complete");
}

/// An event carrying token `i`.
fn token(i: usize) -> String {
    format!("data: {{\"token\":\"{i}\"}}\n\n")
}

/// Feeds `tokens`, each followed by a pause of `pause` and then
/// `after_each`; returns the bytes fed.
async fn feed_tokens(
    feed: &Feed,
    tokens: Range<usize>,
    pause: Duration,
    mut after_each: impl FnMut(),
) -> Vec<u8> {
    let mut sent = Vec::new();
    for i in tokens {
        let chunk = token(i);
        feed.data(chunk.clone());
        sent.extend_from_slice(chunk.as_bytes());
        tokio::time::sleep(pause).await;
        after_each();
    }
    sent
}

/// Feeds `tokens`, one every 100 ms, then trailers (`x-usage: 42`); the
/// task returns when it fed the last token.
fn generate(feed: Feed, tokens: Range<usize>) -> JoinHandle<Instant> {
    tokio::spawn(async move {
        for i in tokens {
            tokio::time::sleep(Duration::from_millis(100)).await;
            feed.data(token(i));
        }
        let last_at = Instant::now();
        let mut trailers = HeaderMap::new();
        trailers.insert("x-usage", http::HeaderValue::from_static("42"));
        feed.trailers(trailers);
        last_at
    })
}

/// Asserts the follower's first chunk arrived well (500 ms) before the
/// leader's last was sent: live, not buffered.
#[track_caller]
fn assert_live(first_at: Instant, last_at: Instant) {
    assert!(
        first_at + Duration::from_millis(500) < last_at,
        "the first chunk arrived {:?} before the leader's last: buffered, not live",
        last_at.saturating_duration_since(first_at)
    );
}

/// A leader streams; a duplicate on the other instance follows it live.
/// Returns the follower's first chunk's arrival, the leader's last chunk's
/// sending, and both whole answers.
async fn live_on(
    a: &IdempotencyLayer,
    b: &IdempotencyLayer,
) -> (Calls, Instant, Instant, Answer, (Bytes, Option<HeaderMap>)) {
    let (service_a, service_b, calls, feed) = streaming_on(a, b, SSE);
    let leader = open(&service_a).await;
    assert_eq!(
        leader.headers()["cache-status"],
        "tower-idempotency; fwd=uri-miss"
    );
    feed.data("data: {\"token\":\"Hel\"}\n\n");

    // The duplicate on the other instance: the head and the first chunk
    // arrive while the leader's upstream is still generating.
    let follower = open(&service_b).await;
    let (parts, mut follower_body) = follower.into_parts();
    let first = timeout(PATIENCE, next_data(&mut follower_body))
        .await
        .expect("the first chunk arrives while the leader streams")
        .expect("a first chunk");
    let first_at = Instant::now();
    assert!(first.starts_with(b"data: {\"token\":\"Hel\"}"));

    // The rest of a 1 s generation, then trailers.
    let generation = generate(feed, 0..10);
    let (leader_parts, leader_body) = leader.into_parts();
    let (led, followed) = tokio::join!(
        rest(leader_body, Vec::new()),
        rest(follower_body, first.to_vec())
    );
    let last_at = generation.await.unwrap();
    let (led_body, led_trailers) = led.expect("the leader's body completes");
    let led = Answer {
        status: leader_parts.status.as_u16(),
        headers: leader_parts.headers,
        body: led_body,
        trailers: led_trailers,
    };
    let followed = followed.expect("the follower's body completes");
    assert_eq!(parts.status, 200);
    assert_eq!(parts.headers["content-type"], "text/event-stream");
    assert_eq!(
        parts.headers["cache-status"],
        "tower-idempotency; fwd=uri-miss; collapsed"
    );
    (calls, first_at, last_at, led, followed)
}

/// Sends the test's request through `layer` over `inner`, asserts it is a
/// hit, and returns its body.
async fn hit_on(layer: &IdempotencyLayer, inner: impl TestService) -> Bytes {
    let again = fetch(&layer.layer(inner), post("/v1/chat", "stream me")).await;
    assert!(
        again.cache_status().contains("hit"),
        "{}",
        again.cache_status()
    );
    again.body
}

/// The names of the streams in Redis, one a line.
fn stream_keys(server: &RedisServer) -> String {
    server.cli(&["--scan", "--pattern", "tidem:*:stream"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_follower_gets_the_leaders_chunks_live_and_byte_identical() {
    let server = RedisServer::start();
    let (a, b) = instances(&server, store).await;
    let (calls, first_at, last_at, led, (body, trailers)) = live_on(&a, &b).await;

    assert_live(first_at, last_at);
    assert_eq!(body, led.body, "byte-identical");
    assert_eq!(trailers, led.trailers);
    assert_eq!(calls.get(), 1);
    assert_eq!(b.stats().coalesced, 1);
    assert_eq!(b.stats().upstream_calls, 0);

    // The leader stored it; its stream goes soon after.
    let (inner, _, _) = streaming(SSE);
    assert_eq!(hit_on(&b, inner).await, led.body);
    until("the stream is deleted", || stream_keys(&server).is_empty()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_body_fails_fails_its_remote_followers_and_stores_nothing() {
    let server = RedisServer::start();
    let (a, b) = instances(&server, store).await;
    let (service_a, service_b, calls, feed) = streaming_on(&a, &b, SSE);
    let (leader, follower, first) =
        follow(&service_a, &service_b, &feed, "data: partial\n\n").await;
    assert_eq!(first, "data: partial\n\n");

    feed.fail();
    ends_with_an_error(follower, &first).await;
    assert!(rest(leader.into_body(), Vec::new()).await.is_err());

    // Nothing was stored, on either instance.
    let again = fetch(&service_b, post("/v1/chat", "stream me")).await;
    assert_eq!(again.body, "fresh #2");
    assert_eq!(calls.get(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_instance_that_dies_mid_stream_never_gives_its_remote_followers_a_spliced_body() {
    let server = RedisServer::start();
    let (inner, calls, feed) = streaming(SSE);
    let (runtime_a, leader) = leader_in_a_runtime_of_its_own(
        store(&server.url()).lease(Duration::from_millis(600)),
        inner.clone(),
        post("/v1/chat", "stream me"),
    )
    .await;
    feed.data("data: partial\n\n");
    let b = instance(store(&server.url())).await;
    let service_b = b.layer(inner);
    let mut follower_body = open(&service_b).await.into_body();
    let first = next_chunk(&mut follower_body).await;
    assert_eq!(first, "data: partial\n\n");

    let died = Instant::now();
    runtime_a.shutdown_background();
    ends_with_an_error(follower_body, &first).await;
    assert!(
        died.elapsed() < Duration::from_secs(5),
        "the follower noticed after {:?}",
        died.elapsed()
    );
    drop(leader);
    // The follower went through once the lease was gone without an end
    // (call #2), and its fresh answer did not repeat the bytes forwarded:
    // an error. Nothing was stored: the next request goes through.
    let again = fetch(&service_b, post("/v1/chat", "stream me")).await;
    assert_eq!(again.body, "fresh #3");
    assert_eq!(calls.get(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_not_to_be_shared_never_reach_redis_and_let_remote_waiters_through() {
    let server = RedisServer::start();
    let (a, b) = instances(&server, store).await;
    let (service_a, service_b, calls, feed) = streaming_on(
        &a,
        &b,
        &[
            ("content-type", "text/event-stream"),
            ("cache-control", "private"),
        ],
    );
    let leader = open(&service_a).await;
    feed.data("data: for the leader's caller only\n\n");
    tokio::time::sleep(Duration::from_millis(100)).await;

    // The duplicate does not wait for the private answer: it goes through.
    let started = Instant::now();
    let other = timeout(
        Duration::from_secs(2),
        fetch(&service_b, post("/v1/chat", "stream me")),
    )
    .await
    .expect("not kept waiting for an answer it may not share");
    assert_eq!(other.body, "fresh #2");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(calls.get(), 2);
    let streams = stream_keys(&server);
    assert!(
        streams.is_empty(),
        "a private answer reached redis: {streams}"
    );
    feed.data("data: done\n\n");
    drop(feed);
    assert_eq!(
        whole(leader).await,
        "data: for the leader's caller only\n\ndata: done\n\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_stream_fails_remote_followers_not_the_leaders_caller() {
    let server = RedisServer::start();
    let (a, b) = instances(&server, |url| {
        store(url).write_timeout(Duration::from_millis(200))
    })
    .await;
    let (service_a, service_b, calls, feed) = streaming_on(&a, &b, SSE);
    let (leader, follower, first) = follow(&service_a, &service_b, &feed, "data: 1\n\n").await;

    server.kill();
    let killed = Instant::now();
    ends_with_an_error(follower, &first).await;
    assert!(killed.elapsed() < Duration::from_secs(5));

    // The leader's own caller gets every byte.
    feed.data("data: 2\n\n");
    drop(feed);
    assert_eq!(whole(leader).await, "data: 1\n\ndata: 2\n\n");
    // The follower went through in the stream's place: its upstream
    // answered `fresh #2`, which does not continue what it had forwarded,
    // hence its error.
    assert_eq!(calls.get(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_a_remote_follower_gets_the_chunks_live_and_byte_identical() {
    let cluster = RedisCluster::start();
    let a = instance(cluster_store(&cluster)).await;
    let b = instance(cluster_store(&cluster)).await;
    let (calls, first_at, last_at, led, (body, trailers)) = live_on(&a, &b).await;
    assert_live(first_at, last_at);
    assert_eq!(body, led.body);
    assert_eq!(trailers, led.trailers);
    assert_eq!(calls.get(), 1);
    assert_eq!(b.stats().coalesced, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_instance_cut_off_from_redis_mid_stream_never_gives_its_remote_followers_a_spliced_body(
) {
    let server = RedisServer::start();
    // Instance A connects as a user of its own, so that the test can cut
    // A alone off: disable the user and kill its connections.
    server.cli(&[
        "ACL", "SETUSER", "leader", "on", ">secret", "~*", "&*", "+@all",
    ]);
    let a_url = format!("redis://leader:secret@127.0.0.1:{}/", server.port());
    let a = instance(store(&a_url).lease(Duration::from_millis(600))).await;
    let b = instance(store(&server.url())).await;
    let (service_a, service_b, calls, feed) = streaming_on(&a, &b, SSE);
    let (leader, follower, first) = follow(&service_a, &service_b, &feed, "data: 1\n\n").await;
    assert_eq!(first, "data: 1\n\n");

    server.cli(&["ACL", "SETUSER", "leader", "off"]);
    server.cli(&["CLIENT", "KILL", "USER", "leader"]);
    let cut = Instant::now();
    feed.data("data: 2\n\n");
    ends_with_an_error(follower, &first).await;
    assert!(
        cut.elapsed() < Duration::from_secs(5),
        "the follower noticed after {:?}",
        cut.elapsed()
    );

    // The leader's own caller gets every byte.
    feed.data("data: 3\n\n");
    drop(feed);
    assert_eq!(whole(leader).await, "data: 1\n\ndata: 2\n\ndata: 3\n\n");
    // The follower went through (its fresh answer did not repeat what it
    // had forwarded, hence its error).
    assert_eq!(calls.get(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_past_the_response_limit_sends_its_remote_followers_through() {
    let server = RedisServer::start();
    let limited = || async {
        IdempotencyLayer::builder()
            .max_response_body(64)
            .redis(store(&server.url()).connect().await.unwrap())
            .build()
    };
    let (a, b) = (limited().await, limited().await);
    let (service_a, service_b, calls, feed) = streaming_on(&a, &b, SSE);
    let (leader, follower, first) = follow(&service_a, &service_b, &feed, "data: 1\n\n").await;
    assert_eq!(first, "data: 1\n\n");

    let large = format!("data: {}\n\n", "x".repeat(100));
    feed.data(large.clone());
    ends_with_an_error(follower, &first).await;
    drop(feed);
    assert_eq!(whole(leader).await, format!("data: 1\n\n{large}"));
    // The follower went through itself once the stream was capped (the
    // leader's caller got the answer whole; the stream cannot carry it):
    // its fresh answer did not repeat the bytes forwarded, so its body
    // still ended with an error.
    assert_eq!(calls.get(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_loses_its_lease_mid_stream_never_gives_its_remote_followers_a_spliced_body()
{
    let server = RedisServer::start();
    let (a, b) = instances(&server, store).await;
    let (service_a, service_b, calls, feed) = streaming_on(&a, &b, SSE);
    let (leader, follower, first) = follow(&service_a, &service_b, &feed, "data: 1\n\n").await;
    assert_eq!(first, "data: 1\n\n");

    // Another leader holds the key now (A's lease ran out while Redis was
    // away): what A still appends is not that leader's answer.
    let lease = lease_of(&a).await;
    server.cli(&["SET", &lease, "another-leader", "PX", "30000"]);
    let taken = Instant::now();
    feed.data("data: 2\n\n");
    ends_with_an_error(follower, &first).await;
    assert!(taken.elapsed() < Duration::from_secs(5));
    drop(feed);
    assert_eq!(whole(leader).await, "data: 1\n\ndata: 2\n\n");
    // The follower went through (its fresh answer did not repeat what it
    // had forwarded, hence its error).
    assert_eq!(calls.get(), 2);
}

// Lazy streams: nothing reaches Redis until a waiter elsewhere asks.

/// The name of the test's request's entry in Redis.
async fn entry_of(layer: &IdempotencyLayer) -> String {
    let key = crate::key_of(layer, &post("/v1/chat", "stream me")).await;
    crate::entry_name("", &key)
}

/// The name of the stream of the test's request's key.
async fn stream_of(layer: &IdempotencyLayer) -> String {
    format!("{}:stream", entry_of(layer).await)
}

/// The name of the lease of the test's request's key.
async fn lease_of(layer: &IdempotencyLayer) -> String {
    format!("{}:lease", entry_of(layer).await)
}

/// The namespace tag and key of the test's request, as a want names them.
async fn want_for(layer: &IdempotencyLayer) -> String {
    let key = crate::key_of(layer, &post("/v1/chat", "stream me")).await;
    let entry = crate::entry_name("", &key);
    let tag = entry.split(':').nth(1).unwrap();
    format!("w:{tag}:{key}")
}

/// A stream's entries, in order: each one's id and fields.
fn stream_entries(server: &RedisServer, stream: &str) -> Vec<(String, Vec<Vec<u8>>)> {
    let mut conn = redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap();
    redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query(&mut conn)
        .unwrap()
}

/// The fields of a stream's entries, in order (`h`, `c`, `e`, `f`).
fn stream_fields(server: &RedisServer, stream: &str) -> Vec<String> {
    stream_entries(server, stream)
        .into_iter()
        .map(|(_, fields)| String::from_utf8_lossy(&fields[0]).into_owned())
        .collect()
}

/// Whether `key` exists in Redis.
fn exists(server: &RedisServer, key: &str) -> bool {
    server.cli(&["EXISTS", key]).trim() != "0"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_remote_follower_a_streamed_answer_writes_no_stream() {
    let server = RedisServer::start();
    // Streams are on by default: the builder is not asked for them.
    let (a, b) = instances(&server, crate::store).await;
    let (inner, calls, feed) = streaming(SSE);
    let service_a = a.layer(inner.clone());
    let stream = stream_of(&a).await;
    let leader = open(&service_a).await;
    // A duplicate on the same instance shares the flight, not Redis.
    let local = open(&service_a).await;
    let sent = feed_tokens(&feed, 0..10, Duration::from_millis(30), || {
        assert!(!exists(&server, &stream), "a stream nobody asked for");
    })
    .await;
    drop(feed);
    assert_eq!(whole(leader).await, sent);
    assert_eq!(whole(local).await, sent);
    assert_eq!(calls.get(), 1);

    // Stored as ever (a moment after the last byte): the other instance
    // gets it from Redis.
    let entry = entry_of(&a).await;
    until("the answer is stored", || exists(&server, &entry)).await;
    assert_eq!(hit_on(&b, inner).await, sent);
    let commands = command_calls(&server);
    for command in ["xadd", "xread", "xrange"] {
        assert_eq!(commands.get(command), None, "{command}: {commands:?}");
    }
    assert!(!exists(&server, &stream));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_follower_arriving_mid_stream_gets_the_prefix_at_once_then_the_rest_live() {
    let server = RedisServer::start();
    let (a, b) = instances(&server, store).await;
    let (service_a, service_b, calls, feed) = streaming_on(&a, &b, SSE);
    let stream = stream_of(&a).await;
    let leader = open(&service_a).await;
    let prefix = feed_tokens(&feed, 0..5, Duration::from_millis(20), || {}).await;
    assert!(!exists(&server, &stream), "written before anyone asked");

    // B asks; A appends its head and everything so far at once.
    let follower = open(&service_b).await;
    assert!(collapsed(&follower), "{:?}", follower.headers());
    let mut follower_body = follower.into_body();
    let first = next_chunk(&mut follower_body).await;
    let first_at = Instant::now();
    assert_eq!(first, prefix, "the prefix, in one entry");
    assert_eq!(stream_fields(&server, &stream), ["h", "c"]);

    let generation = generate(feed, 5..15);
    let (led, followed) = tokio::join!(
        rest(leader.into_body(), Vec::new()),
        rest(follower_body, first.to_vec())
    );
    let last_at = generation.await.unwrap();
    let (led, led_trailers) = led.expect("the leader's body completes");
    let (followed, trailers) = followed.expect("the follower's body completes");
    assert_live(first_at, last_at);
    assert_eq!(followed, led, "byte-identical");
    assert_eq!(trailers, led_trailers);
    assert!(trailers.is_some());
    assert_eq!(calls.get(), 1);
    assert_eq!(b.stats().coalesced, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_remote_followers_and_a_local_one_share_one_stream() {
    let server = RedisServer::start();
    let (a, b) = instances(&server, store).await;
    let c = instance(store(&server.url())).await;
    let (inner, calls, feed) = streaming(SSE);
    let service_a = a.layer(inner.clone());
    let (service_b, service_c) = (b.layer(inner.clone()), c.layer(inner));
    let stream = stream_of(&a).await;
    let leader = open(&service_a).await;
    feed.data("data: 0\n\n");
    let local = open(&service_a).await;
    // Both remote duplicates at once: both may ask, one stream starts.
    let (at_b, at_c) = tokio::join!(open(&service_b), open(&service_c));
    for response in [&at_b, &at_c] {
        assert!(collapsed(response), "{:?}", response.headers());
    }
    // A want for a stream already started changes nothing.
    server.cli(&["PUBLISH", "tidem:events", &want_for(&a).await]);
    let feeding = tokio::spawn(async move {
        for i in 1..8 {
            tokio::time::sleep(Duration::from_millis(30)).await;
            feed.data(format!("data: {i}\n\n"));
        }
    });
    let bodies = tokio::join!(
        rest(leader.into_body(), Vec::new()),
        rest(local.into_body(), Vec::new()),
        rest(at_b.into_body(), Vec::new()),
        rest(at_c.into_body(), Vec::new()),
    );
    feeding.await.unwrap();
    let (led, _) = bodies.0.unwrap();
    let expected: String = (0..8).map(|i| format!("data: {i}\n\n")).collect();
    assert_eq!(led, expected);
    for (who, body) in [("local", bodies.1), ("b", bodies.2), ("c", bodies.3)] {
        assert_eq!(body.unwrap().0, led, "{who}: byte-identical");
    }
    // One stream: its head appended once, then chunks, then one end.
    let fields = stream_fields(&server, &stream);
    assert_eq!(fields.iter().filter(|f| *f == "h").count(), 1, "{fields:?}");
    assert_eq!(fields.first().map(String::as_str), Some("h"), "{fields:?}");
    assert_eq!(fields.last().map(String::as_str), Some("e"), "{fields:?}");
    assert!(
        fields[1..fields.len() - 1].iter().all(|f| f == "c"),
        "{fields:?}"
    );
    assert_eq!(calls.get(), 1);
    assert_eq!(b.stats().coalesced + c.stats().coalesced, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wants_for_keys_not_led_here_and_garbage_on_the_events_channel_write_nothing() {
    let server = RedisServer::start();
    let a = instance(store(&server.url())).await;
    let (inner, calls, feed) = streaming(SSE);
    let service_a = a.layer(inner);
    let stream = stream_of(&a).await;
    let want = want_for(&a).await;
    let (tag, key) = want[2..].split_once(':').unwrap();
    let leader = open(&service_a).await;
    feed.data("data: 0\n\n");

    let other_key = "07".repeat(32);
    let long = format!("w:{tag}:{}", "f".repeat(100_000));
    let garbage = [
        format!("w:{tag}:{other_key}"),
        format!("w:0000000000000000:{key}"),
        format!("w:{}:{key}", tag.to_uppercase()),
        format!("w:{tag}{tag}:{key}"),
        format!("w:{key}"),
        format!("w:{tag}:{key}:more"),
        format!("W:{tag}:{key}"),
        "w:".to_owned(),
        "w".to_owned(),
        String::new(),
        long,
        "\u{fffd}w:".to_owned(),
    ];
    for message in &garbage {
        server.cli(&["PUBLISH", "tidem:events", message]);
    }
    // A round trip on the events channel: the leader has read them all.
    tokio::time::sleep(Duration::from_millis(300)).await;
    feed.data("data: 1\n\n");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let streams = stream_keys(&server);
    assert!(
        streams.is_empty(),
        "written for a want it should ignore: {streams}"
    );
    assert_eq!(command_calls(&server).get("xadd"), None);

    // The control: a want for the key it leads starts that stream, and no
    // other.
    server.cli(&["PUBLISH", "tidem:events", &want]);
    until("the stream holds the head and the chunks so far", || {
        exists(&server, &stream) && stream_fields(&server, &stream) == ["h", "c"]
    })
    .await;
    let streams = server.cli(&["--scan", "--pattern", "tidem:*"]);
    let streams: Vec<&str> = streams.lines().filter(|k| k.ends_with(":stream")).collect();
    assert_eq!(streams, [stream.as_str()]);
    drop(feed);
    assert_eq!(whole(leader).await, "data: 0\n\ndata: 1\n\n");
    assert_eq!(calls.get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_follower_joining_anywhere_gets_the_same_bytes_stress() {
    const ROUNDS: usize = 200;
    const CHUNKS: usize = 8;
    let server = RedisServer::start();
    let (a, b) = instances(&server, store).await;
    // Each round's leader gets the body the round feeds; any other call
    // answers something else, which no follower may receive.
    let next: Arc<Mutex<Option<ChannelBody>>> = Arc::default();
    let (inner, calls) = upstream({
        let next = Arc::clone(&next);
        move |seen: Seen| {
            let body = next.lock().unwrap().take();
            async move {
                match body {
                    Some(body) => sse(200, body.boxed()),
                    None => respond(200, format!("unexpected call #{}", seen.call)),
                }
            }
        }
    });
    let (service_a, service_b) = (a.layer(inner.clone()), b.layer(inner));
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut roll = |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    let mut followed_live = 0;
    for round in 0..ROUNDS {
        let (feed, body) = channel_body();
        *next.lock().unwrap() = Some(body);
        let prompt = Bytes::from(format!("round {round}"));
        let request = || {
            http::Request::post("/v1/chat")
                .body(http_body_util::Full::new(prompt.clone()))
                .unwrap()
        };
        let leader = timeout(PATIENCE, service_a.clone().oneshot(request()))
            .await
            .expect("the leader's head")
            .unwrap();
        let join_at = roll(CHUNKS + 1);
        let mut follower = None;
        let mut expected = Vec::new();
        for i in 0..CHUNKS {
            if i == join_at {
                let (service, request) = (service_b.clone(), request());
                follower = Some(tokio::spawn(async move {
                    timeout(PATIENCE, fetch(&service, request)).await
                }));
            }
            let chunk = format!("data: {round}.{i}\n\n");
            feed.data(chunk.clone());
            expected.extend_from_slice(chunk.as_bytes());
            match roll(3) {
                0 => tokio::task::yield_now().await,
                1 => tokio::time::sleep(Duration::from_millis(1)).await,
                _ => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
        let follower = follower.unwrap_or_else(|| {
            let (service, request) = (service_b.clone(), request());
            tokio::spawn(async move { timeout(PATIENCE, fetch(&service, request)).await })
        });
        drop(feed);
        let led = whole(leader).await;
        let followed = follower
            .await
            .unwrap()
            .expect("the follower's answer in time");
        assert_eq!(led, expected, "round {round}: the leader");
        assert_eq!(
            followed.body, expected,
            "round {round}: joined at {join_at}"
        );
        assert_eq!(calls.get(), round + 1, "round {round}: one upstream call");
        if followed.cache_status().contains("collapsed") {
            followed_live += 1;
        }
    }
    // Not every round ends before the follower joins: some followed live.
    println!("{followed_live} of {ROUNDS} rounds followed the stream live");
    assert!(followed_live > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_want_sent_before_the_leaders_upstream_answers_is_kept_for_its_stream() {
    let server = RedisServer::start();
    let (a, b) = instances(&server, store).await;
    // The leader's upstream answers only once the gate opens: the waiter
    // on B finds the lease held, asks, and nothing can start yet.
    let (feed, body) = channel_body();
    let body = Arc::new(Mutex::new(Some(body)));
    let (inner, calls, gate) = gated(move |seen: &Seen| match body.lock().unwrap().take() {
        Some(body) => sse(200, body.boxed()),
        None => respond(200, format!("fresh #{}", seen.call)),
    });
    let (service_a, service_b) = (a.layer(inner.clone()), b.layer(inner));
    let stream = stream_of(&a).await;
    let leader = tokio::spawn({
        let service_a = service_a.clone();
        async move { open(&service_a).await }
    });
    until("the leader holds the lease", || {
        !server
            .cli(&["--scan", "--pattern", "tidem:*:lease"])
            .is_empty()
    })
    .await;
    let follower = tokio::spawn(async move { open(&service_b).await });
    // B has asked by now (its first look is a few round trips).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!exists(&server, &stream));

    gate.notify_one();
    feed.data("data: 0\n\n");
    let opened = Instant::now();
    let mut follower_body = follower.await.unwrap().into_body();
    let first = next_chunk(&mut follower_body).await;
    // Kept, not asked again: B waits 5 s between looks without a message.
    assert!(
        opened.elapsed() < Duration::from_millis(2500),
        "the want was lost: the stream started {:?} after the head",
        opened.elapsed()
    );
    assert_eq!(first, "data: 0\n\n");
    feed.data("data: 1\n\n");
    drop(feed);
    let led = whole(leader.await.unwrap()).await;
    let (followed, _) = rest(follower_body, first.to_vec()).await.unwrap();
    assert_eq!(led, "data: 0\n\ndata: 1\n\n");
    assert_eq!(followed, led);
    assert_eq!(calls.get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_follower_holds_no_readiness_of_its_inner_service_while_it_relays() {
    // B's inner service takes one call at a time: readiness reserves its
    // only permit. A follower relaying A's stream makes no call unless
    // Redis fails, so it must not keep that permit for the whole stream.
    let server = RedisServer::start();
    let (a, b) = instances(&server, store).await;
    let (inner, calls, feed) = streaming(SSE);
    let service_a = a.layer(inner.clone());
    let service_b = b.layer(tower::limit::ConcurrencyLimitLayer::new(1).layer(inner));
    let leader = open(&service_a).await;
    feed.data("data: 1\n\n");
    let follower = open(&service_b).await;
    assert!(
        follower.headers()["cache-status"]
            .to_str()
            .unwrap()
            .contains("collapsed"),
        "{:?}",
        follower.headers()
    );
    let mut follower_body = follower.into_body();
    let first = next_chunk(&mut follower_body).await;
    assert_eq!(first, "data: 1\n\n");

    // Mid-stream, another request on B reaches B's inner service.
    let other = timeout(
        Duration::from_secs(5),
        service_b
            .clone()
            .oneshot(post("/v1/other", "something else")),
    )
    .await
    .expect("another request on B is served while the follower relays, not stuck in poll_ready")
    .unwrap();
    assert_eq!(other.status(), 200);
    whole(other).await;

    feed.data("data: 2\n\n");
    drop(feed);
    let led = whole(leader).await;
    let (followed, _) = rest(follower_body, first.to_vec()).await.unwrap();
    assert_eq!(followed, led);
    assert_eq!(calls.get(), 2, "the leader's call and the other request's");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_past_a_mib_before_anyone_asks_is_not_streamed_and_its_waiter_gets_the_entry() {
    // The leader keeps at most a MiB for a stream nobody asked for yet:
    // past it, a waiter elsewhere waits for the stored entry instead.
    let server = RedisServer::start();
    let (a, b) = instances(&server, store).await;
    let (service_a, service_b, calls, feed) = streaming_on(&a, &b, SSE);
    let leader = open(&service_a).await;
    let chunk = format!("data: {}\n\n", "x".repeat(64 * 1024));
    let mut leader_body = leader.into_body();
    let mut led = Vec::new();
    for _ in 0..17 {
        feed.data(chunk.clone());
        led.extend_from_slice(&next_chunk(&mut leader_body).await);
    }
    let waiter = tokio::spawn({
        let service_b = service_b.clone();
        async move { fetch(&service_b, post("/v1/chat", "stream me")).await }
    });
    // Its look-up has found the lease and asked for the stream.
    until("the waiter asked for the stream", || {
        command_calls(&server).get("publish").copied().unwrap_or(0) >= 1
    })
    .await;
    feed.data("data: end\n\n");
    drop(feed);
    let (led, _) = rest(leader_body, led).await.unwrap();
    let waited = timeout(PATIENCE, waiter).await.unwrap().unwrap();
    assert_eq!(waited.body, led, "byte-identical, from the stored entry");
    assert_eq!(calls.get(), 1);
    assert_eq!(
        command_calls(&server).get("xadd"),
        None,
        "no stream written"
    );
}

// Gaps: a follower's body is contiguous or it fails.

/// The ids of a stream's entries, in order.
fn stream_ids(server: &RedisServer, stream: &str) -> Vec<String> {
    stream_entries(server, stream)
        .into_iter()
        .map(|(id, _)| id)
        .collect()
}

/// Asserts a follower whose stream had a gap did not complete from it: its
/// body failed (never a body with a hole passed off as complete; the
/// leader's is `led`), and it made at most one upstream call of its own.
#[track_caller]
fn failed_at_the_gap(
    followed: &Result<(Bytes, Option<HeaderMap>), String>,
    led: &[u8],
    calls: &Calls,
) {
    if let Ok((body, _)) = followed {
        assert!(
            body == led,
            "a body of {} bytes passed off as complete; the leader's has {}",
            body.len(),
            led.len()
        );
    }
    // The follower went through (its upstream answers differently) or
    // failed: either way it did not complete from the stream.
    assert!(followed.is_err(), "completed from a stream with a gap");
    assert!(calls.get() <= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_lost_from_a_remote_stream_never_completes_the_followers_body() {
    let server = RedisServer::start();
    let (a, b) = instances(&server, store).await;
    let (service_a, service_b, calls, feed) = streaming_on(&a, &b, SSE);
    let stream = stream_of(&a).await;
    let want = want_for(&a).await;
    let leader = open(&service_a).await;
    // 150 KiB kept before anyone asks: written as three entries of at most
    // 64 KiB once asked.
    let mut sent = Vec::new();
    for byte in [b'a', b'b', b'c'] {
        let chunk = vec![byte; 50 * 1024];
        sent.extend_from_slice(&chunk);
        feed.data(chunk);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.cli(&["PUBLISH", "tidem:events", &want]);
    until("the stream holds the head and the kept chunks", || {
        exists(&server, &stream) && stream_fields(&server, &stream) == ["h", "c", "c", "c"]
    })
    .await;
    // The middle entry is lost (as under another leader's `DEL`).
    let ids = stream_ids(&server, &stream);
    server.cli(&["XDEL", &stream, &ids[2]]);

    let follower = open(&service_b).await;
    let generation = tokio::spawn(async move {
        let mut rest_sent = Vec::new();
        for i in 0..5 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let chunk = format!("data: {i}\n\n");
            rest_sent.extend_from_slice(chunk.as_bytes());
            feed.data(chunk);
        }
        drop(feed);
        rest_sent
    });
    let (led, followed) = tokio::join!(
        rest(leader.into_body(), Vec::new()),
        rest(follower.into_body(), Vec::new())
    );
    sent.extend_from_slice(&generation.await.unwrap());
    let (led, _) = led.expect("the leader's body completes");
    assert_eq!(led, sent);
    failed_at_the_gap(&followed, &led, &calls);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_without_its_offset_fails_a_remote_follower() {
    let server = RedisServer::start();
    let (a, b) = instances(&server, store).await;
    let (service_a, service_b, calls, feed) = streaming_on(&a, &b, SSE);
    let stream = stream_of(&a).await;
    let (leader, follower, first) = follow(&service_a, &service_b, &feed, "data: 1\n\n").await;
    assert_eq!(first, "data: 1\n\n");

    // An entry of the leader's (its lease token) as an older writer wrote
    // it: no offset. Nothing tells where it belongs.
    let token = server.cli(&["GET", &lease_of(&a).await]).trim().to_owned();
    assert!(!token.is_empty());
    server.cli(&["XADD", &stream, "*", "c", "data: ?\n\n", "w", &token]);
    feed.data("data: 2\n\n");
    drop(feed);
    let (led, followed) = tokio::join!(
        rest(leader.into_body(), Vec::new()),
        rest(follower, first.to_vec())
    );
    let (led, _) = led.expect("the leader's body completes");
    assert_eq!(led, "data: 1\n\ndata: 2\n\n");
    failed_at_the_gap(&followed, &led, &calls);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_renewal_finds_its_lease_taken_starts_no_stream_on_a_want() {
    let server = RedisServer::start();
    // Renewed every 300 ms.
    let a = instance(store(&server.url()).lease(Duration::from_millis(900))).await;
    let (inner, calls, feed) = streaming(SSE);
    let service_a = a.layer(inner);
    let stream = stream_of(&a).await;
    let want = want_for(&a).await;
    let leader = open(&service_a).await;
    feed.data("data: 1\n\n");

    // Another leader holds the key now (A's lease ran out while Redis was
    // away); A's next renewal finds it taken.
    let lease = lease_of(&a).await;
    server.cli(&["SET", &lease, "another-leader", "PX", "30000"]);
    let scripts = |server: &RedisServer| {
        let calls = command_calls(server);
        calls.get("evalsha").copied().unwrap_or(0) + calls.get("eval").copied().unwrap_or(0)
    };
    let before = scripts(&server);
    until("A's renewal ran", || scripts(&server) > before).await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    // A want for the key: the leader that lost it writes nothing for it.
    server.cli(&["PUBLISH", "tidem:events", &want]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    feed.data("data: 2\n\n");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!exists(&server, &stream), "streamed under a lease not held");
    assert_eq!(command_calls(&server).get("xadd"), None);
    drop(feed);
    assert_eq!(whole(leader).await, "data: 1\n\ndata: 2\n\n");
    assert_eq!(calls.get(), 1);
}
