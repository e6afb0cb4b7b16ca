//! Live streams across instances: how long a chunk takes from instance A's
//! upstream to the caller of a duplicate request on instance B, and how
//! many Redis commands a streamed answer costs, with that remote follower
//! and without one (A's request alone).
//!
//! Two layers, each with its own `RedisStore`, stand for two instances;
//! they share one `redis-server` the bench starts on a free loopback port
//! (see `tests/support/redis_server.rs`; the Redis on 127.0.0.1:6379, if
//! any, is never used).
//!
//! Each answer, on a fresh key: A's request leads, its upstream streams
//! `--chunks` chunks (default 20) `--gap-ms` apart (default 20 ms, a token
//! stream), each carrying its number; B's duplicate follows A's stream.
//! For every chunk, the bench records when A's upstream produced it and
//! when B's caller received it (chunks gathered into one batch are told
//! apart by their numbers). Every answer checks that B's body is the
//! leader's, byte for byte.
//!
//! Runs, one per `stream_batch` setting (0 ms: append every chunk at once;
//! 10 ms, the default), each with B's duplicate and then without it.
//! The latency of the first chunk (which includes asking for the stream)
//! is also given apart. Redis commands per answer are `INFO commandstats`
//! over the run divided by the answers: those of the stream (the leader's
//! `XADD` and `PEXPIRE`, its `PUBLISH` that the stream started, the
//! follower's `XRANGE`/`XREVRANGE` for the head, its `PUBLISH` asking for
//! the stream, and the reader's `XREAD` and lease checks), and the
//! look-ups and the store (`EVALSHA`) of both
//! instances. Background commands that depend on time, not on answers
//! (counter flushes, subscription pings), are left out.
//!
//! ```text
//! cargo bench --bench streams -- --answers 30
//! ```

#[path = "../tests/support/redis_server.rs"]
mod redis_server;

use std::{
    collections::HashMap,
    convert::Infallible,
    io,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use redis_server::RedisServer;
use tokio::sync::mpsc;
use tower::{Layer, ServiceExt};
use tower_idempotency::{IdempotencyLayer, RedisStore, RequestBody};

struct ChannelBody(mpsc::UnboundedReceiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn commands(server: &RedisServer) -> HashMap<String, u64> {
    server
        .cli(&["INFO", "commandstats"])
        .lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.split(',').find_map(|kv| kv.strip_prefix("calls="))?;
            Some((name.to_owned(), calls.parse().ok()?))
        })
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn run(
    server: &RedisServer,
    batch: Duration,
    follow: bool,
    answers: u64,
    chunks: u64,
    gap: Duration,
) {
    let connect = || async {
        let redis = RedisStore::builder(server.url())
            .streams(true)
            .stream_batch(batch)
            .connect()
            .await
            .expect("connect to the bench redis");
        IdempotencyLayer::builder().redis(redis).build()
    };
    let (a, b) = (connect().await, connect().await);
    // The upstream's bodies, handed over by the bench one per answer.
    let next: Arc<Mutex<Option<ChannelBody>>> = Arc::default();
    let upstream = {
        let next = Arc::clone(&next);
        tower::service_fn(move |_: Request<RequestBody<Full<Bytes>>>| {
            let body = next.lock().unwrap().take().expect("a body for the leader");
            async move {
                let mut response = Response::new(BoxBody::new(body));
                response
                    .headers_mut()
                    .insert("content-type", "text/event-stream".parse().unwrap());
                Ok::<_, Infallible>(response)
            }
        })
    };
    let (service_a, service_b) = (a.layer(upstream.clone()), b.layer(upstream));
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.cli(&["CONFIG", "RESETSTAT"]);
    let mut latencies = Vec::new();
    let mut firsts = Vec::new();
    for answer in 0..answers {
        let (feed, body) = mpsc::unbounded_channel();
        *next.lock().unwrap() = Some(ChannelBody(body));
        let prompt = Bytes::from(format!(
            "{{\"prompt\":\"answer {answer} at {batch:?}, {follow}\"}}"
        ));
        let request = || {
            Request::post("/v1/chat")
                .body(Full::new(prompt.clone()))
                .unwrap()
        };
        let leader = service_a.clone().oneshot(request()).await.unwrap();
        let mut sent = vec![Instant::now()];
        feed.send(Bytes::from("data: 0;\n\n")).unwrap();
        if !follow {
            for i in 1..chunks {
                tokio::time::sleep(gap).await;
                feed.send(Bytes::from(format!("data: {i};\n\n"))).unwrap();
            }
            drop(feed);
            leader.into_body().collect().await.unwrap();
            continue;
        }
        let follower = service_b.clone().oneshot(request()).await.unwrap();
        assert!(follower.headers()["cache-status"]
            .to_str()
            .unwrap()
            .contains("collapsed"));
        let reading = tokio::spawn(async move {
            let mut body = follower.into_body();
            let mut received = Vec::new();
            let mut whole = Vec::new();
            while let Some(frame) = body.frame().await {
                let Ok(data) = frame.expect("the follower's body").into_data() else {
                    continue;
                };
                let at = Instant::now();
                let text = String::from_utf8_lossy(&data).into_owned();
                for n in text
                    .split("data: ")
                    .filter_map(|t| t.split(';').next()?.parse::<usize>().ok())
                {
                    received.push((n, at));
                }
                whole.extend_from_slice(&data);
            }
            (received, whole)
        });
        for i in 1..chunks {
            tokio::time::sleep(gap).await;
            sent.push(Instant::now());
            feed.send(Bytes::from(format!("data: {i};\n\n"))).unwrap();
        }
        drop(feed);
        let led = leader.into_body().collect().await.unwrap().to_bytes();
        let (received, whole) = reading.await.unwrap();
        assert_eq!(whole, led, "byte-identical");
        assert_eq!(received.len() as u64, chunks);
        latencies.extend(received.iter().map(|(n, at)| at.duration_since(sent[*n])));
        firsts.extend(received.first().map(|(n, at)| at.duration_since(sent[*n])));
    }
    // Let the last store and stream end land.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let counts = commands(server);
    latencies.sort();
    firsts.sort();
    let per_answer = |names: &[&str]| -> f64 {
        names
            .iter()
            .map(|name| counts.get(*name).copied().unwrap_or(0))
            .sum::<u64>() as f64
            / answers as f64
    };
    let detail = |names: &[&str]| -> String {
        names
            .iter()
            .map(|name| format!("{name} {:.1}", per_answer(&[name])))
            .collect::<Vec<_>>()
            .join(", ")
    };
    const STREAM: &[&str] = &[
        "xadd",
        "pexpire",
        "publish",
        "xrange",
        "xrevrange",
        "xread",
        "exists",
    ];
    const ENTRY: &[&str] = &["evalsha", "eval"];
    if !follow {
        println!(
            "stream_batch {:>2} ms, a chunk every {} ms, no remote follower: \
             redis commands per answer: stream {:.1} ({}), look-ups and store {:.1} ({})",
            batch.as_millis(),
            gap.as_millis(),
            per_answer(STREAM),
            detail(STREAM),
            per_answer(ENTRY),
            detail(ENTRY),
        );
        return;
    }
    println!(
        "stream_batch {:>2} ms, a chunk every {} ms: chunk latency A upstream -> B caller p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms over {} chunks; \
         first chunk p50 {:.2} ms, p99 {:.2} ms; \
         redis commands per answer: stream {:.1} ({}), look-ups and store {:.1} ({})",
        batch.as_millis(),
        gap.as_millis(),
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3,
        latencies.len(),
        percentile(&firsts, 0.5).as_secs_f64() * 1e3,
        percentile(&firsts, 0.99).as_secs_f64() * 1e3,
        per_answer(STREAM),
        detail(STREAM),
        per_answer(ENTRY),
        detail(ENTRY),
    );
}

fn main() {
    let answers = arg("--answers", 30);
    let chunks = arg("--chunks", 20);
    let gap = Duration::from_millis(arg("--gap-ms", 20));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = RedisServer::start();
    runtime.block_on(async {
        for batch in [Duration::ZERO, Duration::from_millis(10)] {
            for follow in [true, false] {
                run(&server, batch, follow, answers, chunks, gap).await;
            }
        }
    });
}
