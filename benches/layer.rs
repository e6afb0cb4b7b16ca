//! An L1 hit through the layer against the bare inner service.
//!
//! The inner service is a `tower::service_fn` that answers with a stored body
//! (1 KiB or 64 KiB, a `Bytes` clone). Each iteration builds the same
//! chat-completions request (a ~200-byte JSON body with the default vary
//! headers), calls the service and reads the response body whole, so
//! `hit - bare` is what the layer adds to a request it answers from L1:
//! buffering the request body, the key (JSON canonicalised), the moka
//! look-up, and building the replay (headers, `age`, `cache-status`).
//!
//! ```text
//! cargo bench --bench layer -- --measurement-time 3 --warm-up-time 1
//! ```

mod support;

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use tower::Layer;
use tower_idempotency::IdempotencyLayer;

use support::{chat, round_trip, upstream, CHAT};

const SIZES: [(&str, usize); 2] = [("1KiB", 1024), ("64KiB", 64 * 1024)];

fn bench_layer(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("layer");
    for (label, size) in SIZES {
        let stored = Bytes::from(vec![b'x'; size]);

        let bare = upstream(stored.clone());
        group.bench_function(BenchmarkId::new("bare", label), |b| {
            b.to_async(&runtime).iter(|| {
                let mut bare = bare.clone();
                async move { black_box(round_trip(&mut bare, chat(CHAT)).await) }
            })
        });

        let layer = IdempotencyLayer::new();
        let mut service = layer.layer(upstream(stored.clone()));
        // Warm: the first call stores, every later one is an L1 hit.
        runtime.block_on(async {
            assert_eq!(round_trip(&mut service, chat(CHAT)).await, size);
            assert_eq!(round_trip(&mut service, chat(CHAT)).await, size);
        });
        group.bench_function(BenchmarkId::new("l1_hit", label), |b| {
            b.to_async(&runtime).iter(|| {
                let mut service = service.clone();
                async move { black_box(round_trip(&mut service, chat(CHAT)).await) }
            })
        });
        let stats = layer.stats();
        assert_eq!(stats.upstream_calls, 1, "every measured call must be a hit");
        assert_eq!(stats.hits.total() + 1, stats.requests);

        // Bare again, so drift over the run shows up as a difference.
        let bare = upstream(stored);
        group.bench_function(BenchmarkId::new("bare_again", label), |b| {
            b.to_async(&runtime).iter(|| {
                let mut bare = bare.clone();
                async move { black_box(round_trip(&mut bare, chat(CHAT)).await) }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_layer);
criterion_main!(benches);
