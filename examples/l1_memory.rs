//! Is the in-process cache (L1) bounded by its byte budget?
//!
//! Sends `--keys` distinct requests, one after another, to an in-process
//! upstream answering `--body-bytes` each, first through the bare service
//! (no layer: the baseline), then through `IdempotencyLayer` with
//! `l1_capacity(--budget-mib)` and no Redis, so every request is a miss
//! whose response is offered to L1. Prints the process's resident set
//! (`VmRSS`, and its peak `VmHWM`, from `/proc/self/status`) at the start,
//! after the baseline and after the layer run, and what L1 holds
//! (`IdempotencyLayer::l1_usage`: entries and weighed bytes).
//!
//! ```text
//! cargo run --release --example l1_memory -- --keys 100000 --body-bytes 2048 --budget-mib 64
//! ```

#[path = "../benches/support/mod.rs"]
mod support;

use std::time::Instant;

use bytes::Bytes;
use clap::Parser;
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use tower::{Layer, Service};
use tower_idempotency::IdempotencyLayer;

use support::{request, round_trip, upstream_with};

const MIB: u64 = 1024 * 1024;

#[derive(Parser, Debug)]
#[command(about = "Resident memory of the layer's in-process cache against its byte budget")]
struct Args {
    /// Distinct requests (keys) to send.
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// Bytes in each response body.
    #[arg(long, default_value_t = 2048)]
    body_bytes: usize,
    /// The layer's L1 budget (`l1_capacity`), in MiB.
    #[arg(long, default_value_t = 64)]
    budget_mib: u64,
}

/// What the upstream answers: a fresh body of `size` bytes per request, as
/// a real one would allocate.
fn fresh(size: usize) -> impl Fn() -> Bytes + Clone + Send + 'static {
    move || Bytes::from(vec![b'x'; size])
}

/// Sends `keys` distinct requests one after another, reading every body;
/// returns the bytes received.
async fn push<S, RB>(service: &mut S, keys: u64) -> u64
where
    S: Service<Request<Full<Bytes>>, Response = Response<RB>>,
    S::Error: std::fmt::Debug,
    RB: Body,
    RB::Error: std::fmt::Debug,
{
    let mut received = 0;
    for i in 0..keys {
        let question = request("text/plain", format!("question number {i}"));
        received += round_trip(service, question).await as u64;
    }
    received
}

/// `VmRSS` and `VmHWM` from `/proc/self/status`, in bytes.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().strip_suffix("kB"))
            .and_then(|kib| kib.trim().parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB as f64)
}

fn report(label: &str) -> u64 {
    let (rss, peak) = memory();
    println!(
        "{label:<28} VmRSS {:>10}   VmHWM {:>10}",
        mib(rss),
        mib(peak)
    );
    rss
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    let offered = args.keys * args.body_bytes as u64;
    let budget = args.budget_mib * MIB;
    println!(
        "{} keys x {} B bodies = {} offered; L1 budget {}",
        args.keys,
        args.body_bytes,
        mib(offered),
        mib(budget)
    );
    let start = report("start");

    let started = Instant::now();
    let mut bare = upstream_with(fresh(args.body_bytes));
    let received = push(&mut bare, args.keys).await;
    assert_eq!(received, offered);
    let after_bare = report("after bare (no layer)");
    println!("  bare run: {:.2?}", started.elapsed());

    let layer = IdempotencyLayer::builder().l1_capacity(budget).build();
    let mut service = layer.layer(upstream_with(fresh(args.body_bytes)));
    let started = Instant::now();
    let received = push(&mut service, args.keys).await;
    assert_eq!(received, offered);
    let elapsed = started.elapsed();
    let (entries, weighed) = layer.l1_usage().await;
    let after_layer = report("after layer");
    println!("  layer run: {elapsed:.2?}");

    let stats = layer.stats();
    assert_eq!(stats.misses, args.keys, "every request is a distinct key");
    println!(
        "layer: {} misses, {} stored; L1 holds {entries} entries weighing {} ({:.1} % of the budget; {:.1} % of the entries offered)",
        stats.misses,
        stats.stored,
        mib(weighed),
        100.0 * weighed as f64 / budget as f64,
        100.0 * entries as f64 / args.keys as f64,
    );
    println!(
        "RSS: layer run added {} over the bare run ({} over the start); offered {}, budget {}",
        mib(after_layer.saturating_sub(after_bare)),
        mib(after_layer.saturating_sub(start)),
        mib(offered),
        mib(budget)
    );
    assert!(weighed <= budget, "L1 weighs more than its budget");
}
