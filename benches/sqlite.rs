//! The SQLite L2 against the memory-only layer: a hit read from the file
//! (L1 holds nothing) and a miss whose answer is written to the file, each
//! beside the same operation on a layer without an L2.
//!
//! ```text
//! cargo bench --bench sqlite --features sqlite -- --measurement-time 3 --warm-up-time 1
//! ```

mod support;

use std::{
    hint::black_box,
    sync::atomic::{AtomicU64, Ordering},
};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::Request;
use http_body_util::Full;
use tower::Layer;
use tower_idempotency::{IdempotencyLayer, SqliteStore};

use support::{chat, round_trip, upstream};

const ANSWER: &[u8] = &[b'x'; 1024];

/// A request no other has sent, numbered `n`.
fn question(n: u64) -> Request<Full<Bytes>> {
    chat(format!(
        r#"{{"model":"gpt-4o-mini","temperature":0,"messages":[{{"role":"user","content":"question {n}"}}]}}"#
    ))
}

fn bench_sqlite(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group("sqlite");

    // Hits: the memory layer answers from L1; the SQLite layer has no L1
    // room, so every repeat is read from the file.
    let memory = IdempotencyLayer::new().layer(upstream(Bytes::from_static(ANSWER)));
    let store = SqliteStore::open(dir.path().join("hits.sqlite3")).unwrap();
    let file = IdempotencyLayer::builder()
        .l1_capacity(0)
        .sqlite(store)
        .build();
    let from_file = file.layer(upstream(Bytes::from_static(ANSWER)));
    runtime.block_on(async {
        round_trip(&mut memory.clone(), question(0)).await;
        round_trip(&mut from_file.clone(), question(0)).await;
        // The entry reaches the file just after the first answer ends.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    });
    group.bench_function("memory_hit", |b| {
        b.to_async(&runtime)
            .iter(|| async { black_box(round_trip(&mut memory.clone(), question(0)).await) })
    });
    group.bench_function("sqlite_hit", |b| {
        b.to_async(&runtime)
            .iter(|| async { black_box(round_trip(&mut from_file.clone(), question(0)).await) })
    });
    assert_eq!(
        file.stats().upstream_calls,
        1,
        "every measured call was a hit"
    );

    // Misses: every request is new; the SQLite layer also writes the answer.
    let next = AtomicU64::new(1);
    let memory = IdempotencyLayer::new().layer(upstream(Bytes::from_static(ANSWER)));
    let store = SqliteStore::open(dir.path().join("misses.sqlite3")).unwrap();
    let to_file = IdempotencyLayer::builder()
        .sqlite(store)
        .build()
        .layer(upstream(Bytes::from_static(ANSWER)));
    group.bench_function("memory_miss", |b| {
        b.to_async(&runtime).iter(|| async {
            black_box(
                round_trip(
                    &mut memory.clone(),
                    question(next.fetch_add(1, Ordering::Relaxed)),
                )
                .await,
            )
        })
    });
    group.bench_function("sqlite_miss", |b| {
        b.to_async(&runtime).iter(|| async {
            black_box(
                round_trip(
                    &mut to_file.clone(),
                    question(next.fetch_add(1, Ordering::Relaxed)),
                )
                .await,
            )
        })
    });
    group.finish();
}

criterion_group!(benches, bench_sqlite);
criterion_main!(benches);
