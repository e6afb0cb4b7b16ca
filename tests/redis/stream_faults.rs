//! Redis failing under a remote follower mid-stream: the follower goes
//! through in the stream's place, and its caller gets the complete answer
//! only when the fresh one continues exactly what was forwarded; anything
//! else ends its body with an error. The leader's own death still ends it
//! with an error, without going through.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use tokio::time::timeout;
use tower::{Layer, ServiceExt};
use tower_idempotency::{Idempotency, IdempotencyLayer, RedisStoreBuilder, ResponseBody};

use crate::{entry_name, key_of, stream_support::*, support::*};
use redis_server::{RedisCluster, RedisServer};

/// How soon a follower must go through once Redis fails under it: a
/// bound against a hang, not a speed (it takes well under a second).
const DEADLINE: Duration = Duration::from_secs(5);
const QUESTION: &str = "stream me";
const FULL: &str = "data: 1\n\ndata: 2\n\ndata: 3\n\n";

/// A store on `url` with streams on, waits only a notification can cut
/// short, a generous look-up timeout (a loaded machine must not make a
/// follower go through before it follows) and a short write timeout (a
/// paused Redis is noticed soon).
fn store(url: &str) -> RedisStoreBuilder {
    crate::store(url)
        .streams(true)
        .timeout(Duration::from_millis(500))
        .write_timeout(Duration::from_millis(200))
}

async fn instance(redis: RedisStoreBuilder) -> IdempotencyLayer {
    crate::instance(redis).await
}

fn chat(body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    Request::post("/v1/chat")
        .body(Full::new(body.into()))
        .unwrap()
}

/// Instance A's upstream: its first call streams what the test feeds;
/// later calls answer `fresh #<call>` at once.
fn fed() -> (impl TestService, Calls, Feed) {
    streaming(SSE)
}

/// Instance B's upstream: every call answers `status` with `pieces`, one
/// frame each, then ends (or, if `fails`, fails) the body.
fn answering(status: u16, pieces: Vec<Bytes>, fails: bool) -> (impl TestService, Calls) {
    upstream(move |_: Seen| {
        let pieces = pieces.clone();
        async move {
            let (feed, body) = channel_body();
            for piece in pieces {
                feed.data(piece);
            }
            if fails {
                feed.fail();
            }
            sse(status, body.boxed())
        }
    })
}

fn pieces(pieces: &[&'static str]) -> Vec<Bytes> {
    pieces
        .iter()
        .map(|p| Bytes::from_static(p.as_bytes()))
        .collect()
}

/// Sends a request and returns the response with its body still streaming.
async fn open<S: TestService>(
    service: &Idempotency<S>,
    body: impl Into<Bytes>,
) -> Response<ResponseBody<TestBody>> {
    timeout(PATIENCE, service.clone().oneshot(chat(body)))
        .await
        .expect("a response head in time")
        .unwrap()
}

/// A body read to its end: every byte it gave, and how it ended.
#[derive(Debug)]
struct Read {
    bytes: Bytes,
    ended: Result<Option<HeaderMap>, String>,
}

impl Read {
    fn complete(&self) -> Option<&Bytes> {
        self.ended.is_ok().then_some(&self.bytes)
    }
}

/// Reads the rest of a body, after `so_far`.
async fn drain<B>(mut body: B, so_far: &[u8]) -> Read
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    let mut bytes = so_far.to_vec();
    let mut trailers = None;
    let ended = loop {
        match timeout(PATIENCE, body.frame())
            .await
            .expect("the body ends in time")
        {
            None => break Ok(trailers),
            Some(Err(error)) => break Err(format!("{error:?}")),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => bytes.extend_from_slice(&data),
                Err(frame) => trailers = frame.into_trailers().ok(),
            },
        }
    };
    Read {
        bytes: Bytes::from(bytes),
        ended,
    }
}

/// Asserts `read` ended well, with exactly `expected`; `what` names it in
/// the failure.
#[track_caller]
fn assert_complete(read: &Read, expected: impl AsRef<[u8]>, what: &str) {
    assert_eq!(
        read.complete().map(|b| &b[..]),
        Some(expected.as_ref()),
        "{what}: {read:?}"
    );
}

/// What became of a remote follower (and a local follower of it) when
/// Redis failed under them.
struct Failed {
    /// The remote follower's body, and how long it took to end once Redis
    /// failed.
    follower: Read,
    took: Duration,
    /// A second request on B, which followed the first through B's flight.
    local: Read,
    leader: Read,
    calls_a: usize,
    calls_b: usize,
    /// B's L1 entries and statistics once the three requests above had
    /// ended.
    stored_b: u64,
    stats_b: tower_idempotency::Stats,
    /// A third request on B, sent once the others had ended, Redis still
    /// failed: its `cache-status`, its body, and B's upstream calls after it.
    later: (String, Read, usize),
    server: RedisServer,
}

/// A leader on A streams `data: 1`, `data: 2`; a remote follower on B (and
/// a local follower on B) has forwarded both when `fail` fails Redis; then
/// A's upstream sends `data: 3` and ends. B's upstream is `inner_b`.
async fn redis_fails_mid_stream(
    fail: impl FnOnce(&RedisServer),
    inner_b: impl TestService,
    calls_b: Calls,
) -> Failed {
    let server = RedisServer::start();
    let (a, b) = instances(&server, store).await;
    let (inner_a, calls_a, feed) = fed();
    let (service_a, service_b) = (a.layer(inner_a), b.layer(inner_b));
    let leader = open(&service_a, QUESTION).await;
    feed.data("data: 1\n\n");
    let follower = open(&service_b, QUESTION).await;
    assert!(collapsed(&follower), "{:?}", follower.headers());
    let local = open(&service_b, QUESTION).await;
    assert!(collapsed(&local));
    let mut follower = follower.into_body();
    assert_eq!(next_chunk(&mut follower).await, "data: 1\n\n");
    feed.data("data: 2\n\n");
    assert_eq!(next_chunk(&mut follower).await, "data: 2\n\n");
    assert_eq!(calls_b.get(), 0, "B went through before Redis failed");

    fail(&server);
    let failed = Instant::now();
    let follower = drain(follower, b"data: 1\n\ndata: 2\n\n").await;
    let took = failed.elapsed();
    let local = drain(local.into_body(), b"").await;
    feed.data("data: 3\n\n");
    drop(feed);
    let leader = drain(leader.into_body(), b"").await;
    let calls_b_before = calls_b.get();
    let stored_b = b.l1_usage().await.0;
    let stats_b = b.stats();
    let later = open(&service_b, QUESTION).await;
    let status = later.headers()["cache-status"].to_str().unwrap().to_owned();
    let later = (status, drain(later.into_body(), b"").await, calls_b.get());
    Failed {
        follower,
        took,
        local,
        leader,
        calls_a: calls_a.get(),
        calls_b: calls_b_before,
        stored_b,
        stats_b,
        later,
        server,
    }
}

/// Asserts the remote follower went through within the `DEADLINE` of
/// Redis failing (`after` names the failure in a line that says how soon),
/// and every caller got the whole answer: the follower, its local follower,
/// the leader, and a later duplicate on B, as a hit. Each instance called
/// its upstream once.
#[track_caller]
fn went_through_and_completed(failed: &Failed, after: &str) {
    eprintln!(
        "the remote follower completed {:?} after {after}",
        failed.took
    );
    assert!(
        failed.took < DEADLINE,
        "went through after {:?}",
        failed.took
    );
    assert_complete(&failed.follower, FULL, "the remote follower");
    assert_complete(&failed.local, FULL, "its local follower");
    assert_complete(&failed.leader, FULL, "the leader");
    assert_eq!((failed.calls_a, failed.calls_b), (1, 1));
    let (status, later, calls_b) = &failed.later;
    assert!(
        status.starts_with("tower-idempotency; hit"),
        "{status} {later:?}"
    );
    assert_complete(later, FULL, "a later duplicate");
    assert_eq!(*calls_b, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_stream_a_remote_follower_goes_through_and_completes_byte_identical() {
    // B's upstream answers the same bytes, cut differently.
    let (inner_b, calls_b) = answering(
        200,
        pieces(&["data: 1\n\nda", "ta: 2\n\ndata: 3", "\n\n"]),
        false,
    );
    let failed = redis_fails_mid_stream(RedisServer::kill, inner_b, calls_b).await;
    went_through_and_completed(&failed, "the kill");

    // The follower that went through is an upstream call, and saved
    // nothing; the local follower of its flight saved a call.
    let stats = &failed.stats_b;
    assert_eq!(stats.upstream_calls, 1);
    assert_eq!(stats.misses, 1);
    assert_eq!(stats.coalesced, 1);
    assert_eq!(stats.calls_saved, 1);
    assert_eq!(stats.bytes_saved, FULL.len() as u64);
    // B paid for a call, and keeps its answer as its own leader would: the
    // duplicate that arrived later, Redis still down, was a hit, not a
    // second call (in the cluster soak, one instance calling twice for a
    // request).
    assert_eq!(failed.stored_b, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused_mid_stream_a_remote_follower_goes_through_within_a_deadline() {
    let (inner_b, calls_b) = answering(200, pieces(&[FULL]), false);
    let failed = redis_fails_mid_stream(RedisServer::pause, inner_b, calls_b).await;
    // Not a hang: the follower went through while Redis is still paused.
    went_through_and_completed(&failed, "the pause");
    failed.server.resume();
}

/// Asserts the fresh answer did not continue the forwarded bytes: the
/// follower's and its local follower's bodies ended with an error, after
/// a prefix of the whole answer; each instance called its upstream once,
/// B stored nothing, and so a later duplicate on B went through (`case`
/// names the case in the failure).
#[track_caller]
fn not_continued(failed: &Failed, case: &str) {
    assert!(
        failed.follower.ended.is_err(),
        "{case}: {:?}",
        failed.follower
    );
    assert!(failed.local.ended.is_err(), "{case}: {:?}", failed.local);
    // What the callers got is the forwarded prefix, then what the fresh
    // answer continued it with before it went wrong: never a spliced body.
    assert!(
        FULL.as_bytes().starts_with(&failed.follower.bytes),
        "{case}: {:?}",
        failed.follower.bytes
    );
    assert_eq!((failed.calls_a, failed.calls_b), (1, 1), "{case}");
    assert_eq!(failed.stored_b, 0, "{case}: B stored something");
    // So a duplicate sent later goes through, and gets the fresh answer.
    let (status, _, calls_b) = &failed.later;
    assert!(!status.contains("hit"), "{case}: {status}");
    assert_eq!(*calls_b, 2, "{case}");
}

/// Every fresh answer that does not continue exactly what was forwarded:
/// the follower's body ends with an error after the bytes it had, and
/// nothing is stored on B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_answer_that_does_not_continue_the_forwarded_bytes_ends_the_body_with_an_error() {
    let cases: [(&str, u16, &[&'static str], bool); 5] = [
        // A nondeterministic generation: another second token.
        (
            "other bytes",
            200,
            &["data: 1\n\ndata: X\n\ndata: 3\n\n"],
            false,
        ),
        ("another status", 500, &[FULL], false),
        (
            "shorter than what was forwarded",
            200,
            &["data: 1\n\n"],
            false,
        ),
        (
            "the fresh body fails",
            200,
            &["data: 1\n\ndata: 2\n\n"],
            true,
        ),
        (
            "the fresh body fails after more",
            200,
            &["data: 1\n\ndata: 2\n\ndata: 3"],
            true,
        ),
    ];
    for (case, status, answer, fails) in cases {
        let (inner_b, calls_b) = answering(status, pieces(answer), fails);
        let failed = redis_fails_mid_stream(RedisServer::kill, inner_b, calls_b).await;
        not_continued(&failed, case);
        assert_eq!(failed.local.bytes, failed.follower.bytes, "{case}");
        assert!(failed.took < DEADLINE, "{case}: {:?}", failed.took);
        assert_complete(&failed.leader, FULL, case);
        let stats = &failed.stats_b;
        assert_eq!(
            (stats.upstream_calls, stats.coalesced, stats.bytes_saved),
            (1, 1, 0),
            "{case}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_dies_mid_stream_sends_its_remote_follower_through() {
    let server = RedisServer::start();
    let (inner_a, calls_a, feed) = fed();
    let (inner_b, calls_b) = answering(200, pieces(&[FULL]), false);
    let (runtime_a, leader) = leader_in_a_runtime_of_its_own(
        store(&server.url()).lease(Duration::from_millis(600)),
        inner_a,
        chat(QUESTION),
    )
    .await;
    feed.data("data: 1\n\n");
    let b = instance(store(&server.url())).await;
    let follower = open(&b.layer(inner_b), QUESTION).await;
    assert!(collapsed(&follower));
    let mut follower = follower.into_body();
    assert_eq!(next_chunk(&mut follower).await, "data: 1\n\n");

    let died = Instant::now();
    runtime_a.shutdown_background();
    let followed = drain(follower, b"data: 1\n\n").await;
    eprintln!(
        "the remote follower went through {:?} after the leader died",
        died.elapsed()
    );
    // A lease gone without an end looks the same whether the leader died
    // or Redis lost its keys: B goes through, and its fresh answer, which
    // repeats what was forwarded, completes the body.
    assert!(followed.ended.is_ok(), "{followed:?}");
    assert_eq!(followed.bytes, FULL);
    assert!(died.elapsed() < DEADLINE);
    drop(leader);
    assert_eq!((calls_a.get(), calls_b.get()), (1, 1));
    let stats = b.stats();
    assert_eq!(
        (stats.upstream_calls, stats.misses, stats.coalesced),
        (1, 1, 0)
    );
    assert_eq!(stats.bytes_saved, 0);
}

/// A remote follower's savings count like a local live follower's: bytes,
/// the call, and the tokens of the `usage` in the streamed body; its
/// flight's local followers' too. Once it went through, it is an upstream
/// call that saved nothing.
#[cfg(feature = "ai")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_followers_savings_count_unless_it_went_through() {
    const STREAM: &[u8] = include_bytes!("../ai/fixtures/openai_chat_stream.sse");
    let tokens = tower_idempotency::ai::parse_usage(Some("text/event-stream"), STREAM)
        .unwrap()
        .total();
    assert!(tokens > 0);
    let (head, tail) = STREAM.split_at(STREAM.len() / 2);

    for goes_through in [false, true] {
        let server = RedisServer::start();
        let (a, b) = instances(&server, store).await;
        let (inner_a, calls_a, feed) = fed();
        let (inner_b, calls_b) = answering(200, vec![Bytes::from_static(STREAM)], false);
        let (service_a, service_b) = (a.layer(inner_a), b.layer(inner_b));
        let leader = open(&service_a, QUESTION).await;
        feed.data(Bytes::from_static(head));
        let follower = open(&service_b, QUESTION).await;
        let local = open(&service_b, QUESTION).await;
        assert!(collapsed(&follower) && collapsed(&local));
        let mut follower = follower.into_body();
        let mut got = Vec::new();
        while got.len() < head.len() {
            got.extend_from_slice(&next_chunk(&mut follower).await);
        }
        if goes_through {
            server.kill();
        }
        feed.data(Bytes::from_static(tail));
        drop(feed);
        let follower = drain(follower, &got).await;
        let local = drain(local.into_body(), b"").await;
        let leader = drain(leader.into_body(), b"").await;
        for read in [&follower, &local, &leader] {
            assert_complete(read, STREAM, &format!("{goes_through}"));
        }
        assert_eq!(
            (calls_a.get(), calls_b.get()),
            (1, usize::from(goes_through))
        );

        let stats = b.stats();
        let len = STREAM.len() as u64;
        if goes_through {
            // The follower is an upstream call; its local follower saved
            // a call, its bytes and its tokens.
            assert_eq!(
                (stats.upstream_calls, stats.misses, stats.coalesced),
                (1, 1, 1)
            );
            assert_eq!(
                (stats.calls_saved, stats.bytes_saved, stats.tokens_saved),
                (1, len, tokens)
            );
        } else {
            assert_eq!(
                (stats.upstream_calls, stats.misses, stats.coalesced),
                (0, 0, 2)
            );
            assert_eq!(
                (stats.calls_saved, stats.bytes_saved, stats.tokens_saved),
                (2, 2 * len, 2 * tokens)
            );
        }
    }
}

/// Hundreds of rounds of the fall-back with Redis failing at a different
/// point each: B's reader's connection is killed (`CLIENT KILL`) while it
/// follows, before, between or while chunks are in transit. Every round,
/// every caller gets the complete answer, byte for byte, and B's upstream
/// is called once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stress_redis_failing_under_remote_followers_at_random_points() {
    const ROUNDS: usize = 200;
    let server = RedisServer::start();
    let (a, b) = instances(&server, store).await;
    let mut redis = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let started = Instant::now();
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for round in 0..ROUNDS {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let question = format!("round {round}");
        let answer: Vec<String> = (0..4).map(|i| format!("data: {round}.{i}\n\n")).collect();
        let full = answer.concat();
        // B's upstream cuts the same bytes somewhere else.
        let cut = (seed % full.len() as u64) as usize;
        let (inner_b, calls_b) = answering(
            200,
            vec![
                Bytes::copy_from_slice(&full.as_bytes()[..cut]),
                Bytes::copy_from_slice(&full.as_bytes()[cut..]),
            ],
            false,
        );
        let (inner_a, calls_a, feed) = fed();
        let (service_a, service_b) = (a.layer(inner_a), b.layer(inner_b));
        let leader = open(&service_a, question.clone()).await;
        feed.data(answer[0].clone());
        let follower = open(&service_b, question.clone()).await;
        assert!(
            collapsed(&follower),
            "round {round}: {:?} {:?}",
            follower.headers(),
            b.stats()
        );
        let mut follower = follower.into_body();
        let mut got = Vec::new();
        let fed_before = match (seed >> 8) % 4 {
            // Only the head (the first chunk may be on its way).
            0 => 1,
            // The first chunk forwarded.
            1 => {
                got.extend_from_slice(&next_chunk(&mut follower).await);
                1
            }
            // The second chunk in transit.
            2 => {
                feed.data(answer[1].clone());
                2
            }
            // Two chunks forwarded.
            _ => {
                feed.data(answer[1].clone());
                while got.len() < answer[0].len() + answer[1].len() {
                    got.extend_from_slice(&next_chunk(&mut follower).await);
                }
                2
            }
        };
        // B's reader is the one connection blocked in `XREAD`.
        let mut reader = None;
        let deadline = Instant::now() + PATIENCE;
        while reader.is_none() {
            let clients: String = redis::cmd("CLIENT")
                .arg("LIST")
                .query_async(&mut redis)
                .await
                .unwrap();
            reader = clients
                .lines()
                .find(|line| line.contains("cmd=xread"))
                .and_then(|line| line.split(' ').find_map(|f| f.strip_prefix("id=")))
                .map(str::to_owned);
            assert!(Instant::now() < deadline, "round {round}: no reader found");
            if reader.is_none() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let killed: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(reader.unwrap())
            .query_async(&mut redis)
            .await
            .unwrap();
        assert_eq!(killed, 1);
        for chunk in &answer[fed_before..] {
            feed.data(chunk.clone());
        }
        drop(feed);
        let follower = drain(follower, &got).await;
        let leader = drain(leader.into_body(), b"").await;
        assert_complete(&follower, &full, &format!("round {round}"));
        assert_complete(&leader, &full, "the leader");
        assert_eq!((calls_a.get(), calls_b.get()), (1, 1), "round {round}");
    }
    eprintln!("{ROUNDS} rounds in {:?}", started.elapsed());
    // Every remote follower went through, and none counted as coalesced;
    // each kept the answer it paid for.
    let stats = b.stats();
    assert_eq!(stats.upstream_calls, ROUNDS as u64);
    assert_eq!(stats.coalesced, 0);
    assert_eq!(b.l1_usage().await.0, ROUNDS as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_the_master_of_the_key_killed_mid_stream_a_remote_follower_goes_through() {
    let cluster = RedisCluster::start();
    let redis = || cluster_store(&cluster).write_timeout(Duration::from_millis(200));
    let (a, b) = (instance(redis()).await, instance(redis()).await);
    let key = key_of(&a, &chat(QUESTION)).await;
    let master = cluster.master_of(cluster.keyslot(&entry_name("", &key)), 0);

    let (inner_a, calls_a, feed) = fed();
    let (inner_b, calls_b) = answering(200, pieces(&[FULL]), false);
    let (service_a, service_b) = (a.layer(inner_a), b.layer(inner_b));
    let leader = open(&service_a, QUESTION).await;
    feed.data("data: 1\n\n");
    let follower = open(&service_b, QUESTION).await;
    assert!(collapsed(&follower), "{:?}", follower.headers());
    let mut follower = follower.into_body();
    assert_eq!(next_chunk(&mut follower).await, "data: 1\n\n");
    assert_eq!(calls_b.get(), 0, "B went through before Redis failed");

    cluster.node(master).kill();
    let killed = Instant::now();
    let followed = drain(follower, b"data: 1\n\n").await;
    eprintln!(
        "on a cluster, the remote follower completed {:?} after the kill",
        killed.elapsed()
    );
    assert!(killed.elapsed() < DEADLINE);
    assert_complete(&followed, FULL, "the remote follower");
    feed.data("data: 2\n\ndata: 3\n\n");
    drop(feed);
    let leader = drain(leader.into_body(), b"").await;
    assert_complete(&leader, FULL, "the leader");
    assert_eq!((calls_a.get(), calls_b.get()), (1, 1));
}

/// B's upstream answering the whole body again, with `header` added.
fn answering_with(header: (&'static str, &'static str)) -> (impl TestService, Calls) {
    upstream(move |_: Seen| async move {
        let (feed, body) = channel_body();
        feed.data(FULL);
        drop(feed);
        let mut response = sse(200, body.boxed());
        response
            .headers_mut()
            .insert(header.0, http::HeaderValue::from_static(header.1));
        response
    })
}

/// The same bytes under another representation's validator, or marked
/// `private`, do not continue a body whose head the caller already has, nor
/// reach the duplicates sharing the follower's flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_answer_with_another_validator_or_private_does_not_continue_the_body() {
    for header in [
        ("etag", "\"v2\""),
        ("last-modified", "Wed, 02 Dec 2026 18:00:00 GMT"),
        ("cache-control", "private"),
    ] {
        let (inner_b, calls_b) = answering_with(header);
        let failed = redis_fails_mid_stream(RedisServer::kill, inner_b, calls_b).await;
        not_continued(&failed, &format!("{header:?}"));
    }
}

/// Cuts the connection of the instance whose stream reader is blocked in
/// `XREAD`: that instance's reads of the stream fail while Redis, its
/// other connections and the other instances are fine.
async fn cut_the_stream_reader(server: &RedisServer) {
    let mut id = None;
    until("a stream reader is connected", || {
        id = server
            .cli(&["CLIENT", "LIST"])
            .lines()
            .find(|line| line.contains("cmd=xread"))
            .and_then(|line| line.split(' ').find_map(|f| f.strip_prefix("id=")))
            .map(str::to_owned);
        id.is_some()
    })
    .await;
    let id = id.unwrap();
    assert_eq!(server.cli(&["CLIENT", "KILL", "ID", &id]).trim(), "1");
}

/// The question, with an `Idempotency-Key` in `key_mode`.
fn question(key_mode: bool) -> Request<Full<Bytes>> {
    let mut request = chat(QUESTION);
    if key_mode {
        request
            .headers_mut()
            .insert("idempotency-key", http::HeaderValue::from_static("order-1"));
    }
    request
}

/// Sends the question and returns the response with its body still
/// streaming.
async fn send<S: TestService>(
    service: &Idempotency<S>,
    key_mode: bool,
) -> Response<ResponseBody<TestBody>> {
    timeout(PATIENCE, service.clone().oneshot(question(key_mode)))
        .await
        .expect("a response head in time")
        .unwrap()
}

/// A leads and streams `data: 1`; B follows; B's stream reader is cut
/// and B goes through, its own call continuing with `data: B-tail`, which
/// its caller gets whole. Returns A's response, its body still streaming.
async fn b_goes_through_on_its_own<SA: TestService, SB: TestService>(
    server: &RedisServer,
    service_a: &Idempotency<SA>,
    service_b: &Idempotency<SB>,
    feed: &Feed,
    key_mode: bool,
) -> Response<ResponseBody<TestBody>> {
    let leader = send(service_a, key_mode).await;
    feed.data("data: 1\n\n");
    let follower = send(service_b, key_mode).await;
    assert!(collapsed(&follower), "{:?}", follower.headers());
    let mut follower = follower.into_body();
    assert_eq!(next_chunk(&mut follower).await, "data: 1\n\n");
    cut_the_stream_reader(server).await;
    let followed = drain(follower, b"data: 1\n\n").await;
    assert_complete(&followed, "data: 1\n\ndata: B-tail\n\n", "B's follower");
    leader
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fall_back_copy_gives_way_to_the_leaders_entry_once_stored() {
    // Only B's stream reader fails: Redis and A carry on. B goes through,
    // and its upstream continues the forwarded bytes with another tail
    // than A's. B keeps its answer, provisionally: until A's is stored, a
    // duplicate on B gets B's (no second call); from then on, A's, as
    // every other instance does.
    for key_mode in [false, true] {
        let server = RedisServer::start();
        let build = |url: String| async move {
            let redis = store(&url).connect().await.unwrap();
            let builder = IdempotencyLayer::builder().redis(redis);
            match key_mode {
                true => builder.idempotency_key_header(tower_idempotency::KeyHeader::Required),
                false => builder,
            }
            .build()
        };
        let (a, b, c) = (
            build(server.url()).await,
            build(server.url()).await,
            build(server.url()).await,
        );
        let (inner_a, calls_a, feed) = fed();
        let (inner_b, calls_b) =
            answering(200, pieces(&["data: 1\n\n", "data: B-tail\n\n"]), false);
        let (inner_c, calls_c) = answering(200, pieces(&["data: C\n\n"]), false);
        let (service_a, service_b) = (a.layer(inner_a), b.layer(inner_b));
        let service_c = c.layer(inner_c);

        let leader =
            b_goes_through_on_its_own(&server, &service_a, &service_b, &feed, key_mode).await;
        assert_eq!(calls_b.get(), 1);

        // A has not stored yet: B's copy stands.
        let early = Answer::read(send(&service_b, key_mode).await).await;
        assert!(
            early.cache_status().starts_with("tower-idempotency; hit"),
            "{early:?}"
        );
        assert_eq!(
            early.body, "data: 1\n\ndata: B-tail\n\n",
            "B before A stored"
        );

        feed.data("data: A-tail\n\n");
        drop(feed);
        let led = drain(leader.into_body(), b"").await;
        const A: &str = "data: 1\n\ndata: A-tail\n\n";
        assert_complete(&led, A, "A's leader");
        // A stores in Redis just after its caller has the end.
        let entry = entry_name("", &key_of(&a, &question(key_mode)).await);
        until("A's answer is in Redis", || {
            server.cli(&["HEXISTS", &entry, "r"]).trim() == "1"
        })
        .await;

        // Stored: B gives A's answer, as C does, and keeps giving it: read
        // from Redis once, in place of the copy, then from L1.
        let before = b.stats().hits;
        for round in 0..2 {
            let on_b = Answer::read(send(&service_b, key_mode).await).await;
            assert!(
                on_b.cache_status().starts_with("tower-idempotency; hit"),
                "{on_b:?}"
            );
            assert_eq!(
                on_b.body, A,
                "B after A stored, key mode {key_mode}, #{round}"
            );
            let on_c = Answer::read(send(&service_c, key_mode).await).await;
            assert!(
                on_c.cache_status().starts_with("tower-idempotency; hit"),
                "{on_c:?}"
            );
            assert_eq!(on_c.body, A, "C");
        }
        let after = b.stats().hits;
        assert_eq!((after.l2 - before.l2, after.l1 - before.l1), (1, 1));
        assert_eq!((calls_a.get(), calls_b.get(), calls_c.get()), (1, 1, 0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fall_back_answer_the_store_policy_refuses_is_not_kept() {
    // As above, but B's policy stores nothing: B's follower still gets
    // the whole answer from its own call, and B keeps no copy of it.
    let server = RedisServer::start();
    let a = instance(store(&server.url())).await;
    let b = IdempotencyLayer::builder()
        .redis(store(&server.url()).connect().await.unwrap())
        .store_if(|_: &http::response::Parts| false)
        .build();
    let (inner_a, calls_a, feed) = fed();
    let (inner_b, calls_b) = answering(200, pieces(&["data: 1\n\n", "data: B-tail\n\n"]), false);
    let (service_a, service_b) = (a.layer(inner_a), b.layer(inner_b));
    let leader = b_goes_through_on_its_own(&server, &service_a, &service_b, &feed, false).await;
    assert_eq!(calls_b.get(), 1);
    assert_eq!(b.l1_usage().await.0, 0, "B kept what its policy refuses");
    feed.data("data: 2\n\n");
    drop(feed);
    let led = drain(leader.into_body(), b"").await;
    assert_complete(&led, "data: 1\n\ndata: 2\n\n", "A's leader");
    assert_eq!(calls_a.get(), 1);
}
