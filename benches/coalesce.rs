//! The follower tail: 1,000 concurrent identical requests, one upstream call.
//!
//! Each iteration sends 1,000 identical requests (a key not seen before) at
//! a layer whose upstream holds its answer until the bench releases it. Once
//! every request has reached the layer and the one upstream call has begun,
//! the bench releases the upstream. The measured time runs from the instant
//! the upstream returns its response to the instant the last of the 1,000
//! callers has read its whole body: the cost of fanning one answer out to
//! 999 followers (and the leader's own caller). Runs on a multi-thread Tokio
//! runtime with 2 workers.
//!
//! ```text
//! cargo bench --bench coalesce -- --measurement-time 3 --warm-up-time 1
//! ```

mod support;

use std::{
    convert::Infallible,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{Request, Response};
use http_body_util::Full;
use tokio::sync::Notify;
use tower::{Layer, Service};
use tower_idempotency::{IdempotencyLayer, RequestBody};

use support::{chat, round_trip};

const CALLERS: usize = 1000;
const SIZES: [(&str, usize); 2] = [("1KiB", 1024), ("64KiB", 64 * 1024)];

/// An upstream that answers once released, noting when it returned.
#[derive(Clone)]
struct Gate {
    release: Arc<Notify>,
    calls: Arc<AtomicUsize>,
    returned_at: Arc<Mutex<Option<Instant>>>,
    body: Bytes,
}

impl Gate {
    fn new(size: usize) -> Self {
        Self {
            release: Arc::new(Notify::new()),
            calls: Arc::new(AtomicUsize::new(0)),
            returned_at: Arc::new(Mutex::new(None)),
            body: Bytes::from(vec![b'x'; size]),
        }
    }

    fn service(
        &self,
    ) -> impl Service<
        Request<RequestBody<Full<Bytes>>>,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future: Send,
    > + Clone
           + Send
           + 'static {
        let gate = self.clone();
        tower::service_fn(move |_: Request<RequestBody<Full<Bytes>>>| {
            let gate = gate.clone();
            async move {
                gate.calls.fetch_add(1, Ordering::SeqCst);
                gate.release.notified().await;
                let response = Response::new(Full::new(gate.body.clone()));
                *gate.returned_at.lock().unwrap() = Some(Instant::now());
                Ok::<_, Infallible>(response)
            }
        })
    }
}

fn request(round: u64) -> Request<Full<Bytes>> {
    chat(format!(
        r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"round {round}"}}]}}"#
    ))
}

/// One burst; returns the time from the upstream's return to the last
/// caller's last byte.
async fn burst(layer: &IdempotencyLayer, size: usize, round: u64) -> Duration {
    let gate = Gate::new(size);
    let service = layer.layer(gate.service());
    let before = layer.stats().requests;

    let callers: Vec<_> = (0..CALLERS)
        .map(|_| {
            let mut service = service.clone();
            tokio::spawn(async move {
                let len = round_trip(&mut service, request(round)).await;
                (Instant::now(), len)
            })
        })
        .collect();

    // Every caller has entered the layer and the leader is upstream; each
    // caller reaches its flight in the same poll, so a short pause is plenty
    // (a caller held back longer is answered from L1, counted after the run).
    while layer.stats().requests - before < CALLERS as u64 || gate.calls.load(Ordering::SeqCst) < 1
    {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    gate.release.notify_one();

    let mut last = None;
    for caller in callers {
        let (done, len) = caller.await.unwrap();
        assert_eq!(len, size);
        last = last.max(Some(done));
    }
    assert_eq!(gate.calls.load(Ordering::SeqCst), 1, "one upstream call");
    let returned = gate.returned_at.lock().unwrap().expect("upstream returned");
    last.unwrap().saturating_duration_since(returned)
}

fn bench_coalesce(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("coalesce");
    // Each iteration is a whole burst (~10 ms of wall time for ~1 ms
    // measured): few samples keep the run short.
    group.sample_size(10);
    for (label, size) in SIZES {
        let layer = IdempotencyLayer::new();
        let mut round = 0u64;
        group.bench_function(BenchmarkId::new("follower_tail_1000", label), |b| {
            b.iter_custom(|iters| {
                runtime.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        round += 1;
                        total += burst(&layer, size, round).await;
                    }
                    total
                })
            })
        });
        // A caller that the scheduler held back past the leader's end is
        // answered from L1 instead of following: still one upstream call.
        let stats = layer.stats();
        assert_eq!(stats.upstream_calls, stats.misses);
        assert_eq!(
            stats.requests,
            stats.misses + stats.coalesced + stats.hits.total()
        );
        assert_eq!(layer.in_flight(), 0);
        eprintln!(
            "coalesce/{label}: {} bursts, {} followers, {} late callers answered from L1",
            stats.misses,
            stats.coalesced,
            stats.hits.total()
        );
    }
    group.finish();
}

criterion_group!(benches, bench_coalesce);
criterion_main!(benches);
