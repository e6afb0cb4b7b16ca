//! The Redis L2 through the layer, against bare Redis commands to the same
//! server over the same kind of connection.
//!
//! A `redis-server` is started on a free loopback port for the run (see
//! `tests/support/redis_server.rs`); the Redis on 127.0.0.1:6379, if any, is
//! never used. Everything runs on one current-thread Tokio runtime: the
//! benched task, the redis connection drivers and the layer's background
//! tasks.
//!
//! - `l2/hit`: a layer with `RedisStore` and `l1_capacity(0)` (moka with a
//!   capacity of zero stores nothing), so every request is answered from
//!   Redis: the same ~220-byte chat-completions POST each iteration, against
//!   a 1 KiB response stored beforehand; the body is read whole. One
//!   `HGET` of the record per request (the hit is counted locally and
//!   flushed in batches).
//! - `l2/bare_get`: `GET` of a 1 KiB value over a `ConnectionManager`, the
//!   floor of any one-round-trip read. Measured before and after the hit.
//! - `l2/bare_hget`: diagnostic. The `HGET` a hit sends, of the same stored
//!   entry, over a `ConnectionManager`, without the layer around it.
//!
//! Redis's own accounting (`INFO commandstats`) is reset before and printed
//! after `bare_get`, `hit`, `bare_hget` and `miss`: what Redis spends per
//! `GET`, per hit (its `HGET`, and the batched `EVALSHA`s that add hits), per
//! `HGET` alone.
//! - `l2/lookup_script`: diagnostic. The look-up script (a copy of
//!   `LOOKUP` in `src/store/redis/scripts.rs`, checked to answer a hit)
//!   invoked by `EVALSHA` on the same stored entry, over a
//!   `ConnectionManager`: what the hit costs in Redis and on the wire,
//!   without the layer around it.
//! - `l2/miss`: a unique request body each iteration against an in-process
//!   upstream answering 1 KiB at once: look-up-or-claim, the upstream call,
//!   the caller reads the body, then store-and-release (the second
//!   `EVALSHA`, which the layer runs after the caller has its last byte).
//!   Each iteration waits for that store's completion message on the events
//!   channel, so both round trips are inside the measurement.
//! - `l2/miss_caller`: the same, without waiting for the store: what the
//!   caller sees back to back (each store overlaps the next request).
//! - `l2/bare_set_get`: `SET` of a fresh 1 KiB value, then `GET` of it: two
//!   round trips, the floor of a miss.
//!
//! ```text
//! cargo bench --bench l2 -- --measurement-time 3 --warm-up-time 1
//! ```

#[path = "../tests/support/redis_server.rs"]
mod redis_server;
mod support;

use std::{
    future::poll_fn,
    hint::black_box,
    pin::Pin,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::{Duration, Instant},
};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use futures_core::Stream;
use redis::aio::ConnectionManager;
use redis_server::RedisServer;
use support::{chat, round_trip, upstream, CHAT};
use tower::Layer;
use tower_idempotency::{IdempotencyLayer, RedisStore};

const RESPONSE_BYTES: usize = 1024;

/// A request body no earlier iteration has sent.
fn unique_body() -> Bytes {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Relaxed);
    Bytes::from(format!(
        r#"{{"model":"gpt-4o-mini","temperature":0,"messages":[{{"role":"system","content":"You are a helpful assistant."}},{{"role":"user","content":"Describe product photo number {n} in one sentence."}}]}}"#
    ))
}

/// The name of an entry's hash in Redis (see the `store::redis` docs).
fn entry_name(namespace: &str, key: &tower_idempotency::Key) -> String {
    use sha2::{Digest, Sha256};
    let tag: String = Sha256::digest(namespace.as_bytes())[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("tidem:{tag}:{{{key}}}")
}

/// Completion messages on the layer's events channel.
struct Events(Pin<Box<redis::aio::PubSubStream>>);

impl Events {
    async fn subscribe(client: &redis::Client) -> Self {
        let mut pubsub = client.get_async_pubsub().await.unwrap();
        pubsub.subscribe("tidem:events").await.unwrap();
        Self(Box::pin(pubsub.into_on_message()))
    }

    /// Waits for the next message (a store-and-release has run in Redis).
    async fn next(&mut self) {
        poll_fn(|cx| self.0.as_mut().poll_next(cx))
            .await
            .expect("the events subscription ended");
    }
}

fn bench_l2(c: &mut Criterion) {
    let server = RedisServer::start();
    let url = server.url();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = redis::Client::open(url.as_str()).unwrap();

    let (layer, mut bare, mut events) = runtime.block_on(async {
        // A generous timeout: on a busy machine a 50 ms look-up that timed
        // out would turn a hit into a miss (checked below: no errors).
        let store = RedisStore::builder(url.as_str())
            .timeout(Duration::from_secs(1))
            .connect()
            .await
            .expect("connect to the bench redis");
        let layer = IdempotencyLayer::builder()
            .l1_capacity(0)
            .redis(store)
            .build();
        let bare = ConnectionManager::new(client.clone()).await.unwrap();
        let events = Events::subscribe(&client).await;
        (layer, bare, events)
    });
    let mut service = layer.layer(upstream(Bytes::from(vec![b'x'; RESPONSE_BYTES])));

    let hit_body = Bytes::from_static(CHAT.as_bytes());
    let entry = {
        let (parts, _) = chat(hit_body.clone()).into_parts();
        entry_name("", &layer.key_for(&parts, &hit_body).unwrap())
    };
    let value = vec![b'v'; RESPONSE_BYTES];
    runtime.block_on(async {
        // Store the 1 KiB response, and wait until it is in Redis.
        assert_eq!(
            round_trip(&mut service, chat(hit_body.clone())).await,
            RESPONSE_BYTES
        );
        events.next().await;
        // Warm: the second request is the first L2 hit.
        assert_eq!(
            round_trip(&mut service, chat(hit_body.clone())).await,
            RESPONSE_BYTES
        );
        let stats = layer.stats();
        assert_eq!((stats.hits.l1, stats.hits.l2), (0, 1), "{stats:?}");
        let _: () = redis::cmd("SET")
            .arg("bench:value")
            .arg(&value)
            .query_async(&mut bare)
            .await
            .unwrap();
        // The copied look-up script answers a hit on the stored entry.
        let reply: Vec<redis::Value> = lookup_script(&mut bare, &entry).await;
        assert!(
            matches!(reply.as_slice(), [redis::Value::Int(1), redis::Value::BulkString(r)] if r.len() > RESPONSE_BYTES),
            "the copy of LOOKUP no longer answers a hit: {reply:?}"
        );
    });

    let mut group = c.benchmark_group("l2");

    runtime.block_on(reset_commandstats(&mut bare));

    group.bench_function("bare_get", |b| {
        b.to_async(&runtime).iter(|| {
            let mut conn = bare.clone();
            async move {
                let value: Vec<u8> = redis::cmd("GET")
                    .arg("bench:value")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                black_box(value.len())
            }
        })
    });

    runtime.block_on(print_commandstats(&mut bare, "bare_get", None));
    runtime.block_on(reset_commandstats(&mut bare));
    let before = layer.stats();
    group.bench_function("hit", |b| {
        b.to_async(&runtime).iter(|| {
            let mut service = service.clone();
            let body = hit_body.clone();
            async move { black_box(round_trip(&mut service, chat(body)).await) }
        })
    });
    let after = layer.stats();
    runtime.block_on(print_commandstats(
        &mut bare,
        "hit",
        Some(after.requests - before.requests),
    ));
    assert_eq!(
        after.upstream_calls, before.upstream_calls,
        "every measured call must be a hit"
    );
    assert_eq!(after.hits.l1, 0, "L1 must store nothing");
    assert_eq!(
        after.hits.l2 - before.hits.l2,
        after.requests - before.requests,
        "every measured call must be an L2 hit"
    );

    runtime.block_on(reset_commandstats(&mut bare));
    group.bench_function("bare_hget", |b| {
        b.to_async(&runtime).iter(|| {
            let mut conn = bare.clone();
            let entry = entry.clone();
            async move {
                let record: Vec<u8> = redis::cmd("HGET")
                    .arg(&entry)
                    .arg("r")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                black_box(record.len())
            }
        })
    });

    runtime.block_on(print_commandstats(&mut bare, "bare_hget", None));

    group.bench_function("lookup_script", |b| {
        b.to_async(&runtime).iter(|| {
            let mut conn = bare.clone();
            let entry = entry.clone();
            async move { black_box(lookup_script(&mut conn, &entry).await.len()) }
        })
    });

    group.bench_function("bare_get_again", |b| {
        b.to_async(&runtime).iter(|| {
            let mut conn = bare.clone();
            async move {
                let value: Vec<u8> = redis::cmd("GET")
                    .arg("bench:value")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                black_box(value.len())
            }
        })
    });

    let set_keys = AtomicU64::new(0);
    group.bench_function("bare_set_get", |b| {
        b.to_async(&runtime).iter(|| {
            let mut conn = bare.clone();
            let key = format!("bench:set:{}", set_keys.fetch_add(1, Relaxed));
            let value = &value;
            async move {
                let _: () = redis::cmd("SET")
                    .arg(&key)
                    .arg(value)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                let read: Vec<u8> = redis::cmd("GET")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                black_box(read.len())
            }
        })
    });

    let events = tokio::sync::Mutex::new(events);
    runtime.block_on(reset_commandstats(&mut bare));
    let before = layer.stats();
    group.bench_function("miss", |b| {
        b.to_async(&runtime).iter_custom(|iterations| {
            let mut service = service.clone();
            let events = &events;
            async move {
                let mut events = events.lock().await;
                let mut elapsed = Duration::ZERO;
                for _ in 0..iterations {
                    let body = unique_body();
                    let started = Instant::now();
                    black_box(round_trip(&mut service, chat(body)).await);
                    events.next().await;
                    elapsed += started.elapsed();
                }
                elapsed
            }
        })
    });
    let after = layer.stats();
    runtime.block_on(print_commandstats(
        &mut bare,
        "miss",
        Some(after.requests - before.requests),
    ));
    assert_eq!(
        after.misses - before.misses,
        after.requests - before.requests,
        "every measured call must be a miss"
    );
    assert_eq!(after.stored - before.stored, after.misses - before.misses);

    group.bench_function("miss_caller", |b| {
        b.to_async(&runtime).iter(|| {
            let mut service = service.clone();
            async move { black_box(round_trip(&mut service, chat(unique_body())).await) }
        })
    });
    group.finish();

    let stats = layer.stats();
    assert_eq!(
        (
            stats.store.errors,
            stats.store.skipped,
            stats.store.unreadable
        ),
        (0, 0, 0),
        "redis must not have failed during the run: {stats:?}"
    );
    drop(service);
    drop(layer);
    drop(runtime);
    drop(server);
}

async fn reset_commandstats(conn: &mut ConnectionManager) {
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(conn)
        .await
        .unwrap();
}

/// Prints Redis's own per-command counts and time since the last reset
/// (`INFO commandstats`; commands run inside a script are counted too): how
/// many commands each request sent, and what Redis spent on each.
async fn print_commandstats(conn: &mut ConnectionManager, phase: &str, requests: Option<u64>) {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    match requests {
        Some(n) => eprintln!("commandstats after `{phase}` ({n} requests through the layer):"),
        None => eprintln!("commandstats after `{phase}`:"),
    }
    for line in info.lines().filter(|line| line.starts_with("cmdstat_")) {
        if !line.starts_with("cmdstat_info") && !line.starts_with("cmdstat_config") {
            eprintln!("  {line}");
        }
    }
}

/// `EVALSHA` of the copied look-up script on `entry`, as the layer sends it.
async fn lookup_script(conn: &mut ConnectionManager, entry: &str) -> Vec<redis::Value> {
    static SCRIPT: std::sync::LazyLock<redis::Script> =
        std::sync::LazyLock::new(|| redis::Script::new(tower_idempotency::__fuzz::LOOKUP_SCRIPT));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    SCRIPT
        .prepare_invoke()
        .key(entry)
        .key(format!("{entry}:lease"))
        .arg("bench-token")
        .arg(10_000)
        .arg(now)
        .invoke_async(conn)
        .await
        .unwrap()
}

criterion_group!(benches, bench_l2);
criterion_main!(benches);
