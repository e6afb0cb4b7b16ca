//! Key derivation against plain SHA-256 over the same bytes.
//!
//! For each body size (1 KiB, 64 KiB, 4 MiB) three functions see the same
//! bytes, and criterion reports each as bytes per second
//! (`Throughput::Bytes`), so the ratio to `sha2` reads directly:
//!
//! - `sha2`: `sha2::Sha256::digest(body)`, the floor;
//! - `raw`: `IdempotencyLayer::key_for` on a `text/plain` request (framing
//!   plus the body hashed byte for byte);
//! - `json`: `key_for` on an `application/json` request, a chat-completions
//!   document whose message contents carry newlines and quotes, as real
//!   prompts do (canonicalised before hashing);
//! - `json_noescape`: the same document shape with no escapes in any string,
//!   which separates the cost of the JSON walk from that of re-escaping;
//! - `json_compact`: the `json` document as `serde_json::to_vec` writes it
//!   (no white space, members sorted): already canonical, the form a client
//!   serialising a `serde_json::Value` sends.
//!
//! For each JSON document two more lines locate the limit (the profile in
//! BENCHMARKS.md): `sha2/<variant>_canonical`, SHA-256 of the canonical form
//! alone (the floor of any key over it), and `canonical/<variant>`, the
//! canonical form written into a `Vec` without hashing (both passes, no
//! SHA-256).
//!
//! Times are the benchmarking thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`),
//! not wall time: the work is single-threaded and never waits, and on a
//! shared machine wall time mostly measures the wait for a core. Set
//! `KEY_BENCH_WALL=1` for wall time.
//!
//! ```text
//! cargo bench --bench key -- --measurement-time 3 --warm-up-time 1
//! ```

mod support;

use std::{hint::black_box, time::Duration};

use bytes::Bytes;
use criterion::{
    criterion_main,
    measurement::{Measurement, ValueFormatter, WallTime},
    BenchmarkId, Criterion, Throughput,
};
use http::request::Parts;
use serde_json::json;
use sha2::{Digest, Sha256};
use tower_idempotency::{__fuzz::canonical_json, IdempotencyLayer};

use support::request;

const SIZES: [(&str, usize); 3] = [
    ("1KiB", 1024),
    ("64KiB", 64 * 1024),
    ("4MiB", 4 * 1024 * 1024),
];

fn parts(content_type: &str) -> Parts {
    request(content_type, Bytes::new()).into_parts().0
}

/// Prose the way prompts come: sentences, quotes, paragraphs.
fn prose(len: usize, escapes: bool) -> String {
    const WORDS: [&str; 12] = [
        "the",
        "model",
        "should",
        "summarise",
        "quarterly",
        "revenue",
        "figures",
        "for",
        "each",
        "region",
        "and",
        "explain",
    ];
    let mut out = String::with_capacity(len + 16);
    let mut i = 0usize;
    while out.len() < len {
        out.push_str(WORDS[i % WORDS.len()]);
        i += 1;
        out.push_str(match (escapes, i % 97, i % 13) {
            (true, 0, _) => ".\n\n",
            (true, _, 0) => " \"quoted\" ",
            (_, _, 0) => ". ",
            _ => " ",
        });
    }
    out.truncate(len);
    out
}

/// A chat-completions request of about `size` bytes: a system prompt and
/// alternating user/assistant turns with long contents, pretty-printed or
/// compact (members sorted either way: `serde_json`'s map is ordered).
fn chat_document(size: usize, escapes: bool, pretty: bool) -> Vec<u8> {
    let turn = (size / 8).clamp(64, 16 * 1024);
    // Pretty-printed envelope and per-message overhead, roughly.
    let mut estimate = 320 + turn / 2;
    let mut messages = vec![json!({"role": "system", "content": prose(turn / 2, escapes)})];
    while estimate < size {
        let role = if messages.len() % 2 == 1 {
            "user"
        } else {
            "assistant"
        };
        let len = turn.min(size - estimate).max(16);
        estimate += len + 64;
        messages.push(json!({"role": role, "content": prose(len, escapes)}));
    }
    let body = json!({
        "model": "gpt-4o-mini",
        "temperature": 0.2,
        "max_tokens": 512,
        "stream": false,
        "user": "user-1234",
        "metadata": {"request_id": "req-abc", "tenant": "acme"},
        "messages": messages,
    });
    if pretty {
        serde_json::to_vec_pretty(&body).unwrap()
    } else {
        serde_json::to_vec(&body).unwrap()
    }
}

fn bench_key<M: Measurement>(c: &mut Criterion<M>) {
    let layer = IdempotencyLayer::new();
    let text = parts("text/plain; charset=utf-8");
    let json = parts("application/json");

    for (label, size) in SIZES {
        let mut group = c.benchmark_group(format!("key/{label}"));

        let raw_body = prose(size, true).into_bytes();
        group.throughput(Throughput::Bytes(raw_body.len() as u64));
        group.bench_with_input(BenchmarkId::new("sha2", "raw"), &raw_body, |b, body| {
            b.iter(|| Sha256::digest(black_box(body)))
        });
        group.bench_with_input(BenchmarkId::new("key", "raw"), &raw_body, |b, body| {
            b.iter(|| layer.key_for(black_box(&text), black_box(body)))
        });

        for (variant, escapes, pretty) in [
            ("json", true, true),
            ("json_noescape", false, true),
            ("json_compact", true, false),
        ] {
            let document = chat_document(size, escapes, pretty);
            assert!(layer.key_for(&json, &document).is_some());
            let canonical = canonical_json(&document, &[]).expect("a JSON document");
            group.throughput(Throughput::Bytes(document.len() as u64));
            group.bench_with_input(BenchmarkId::new("sha2", variant), &document, |b, body| {
                b.iter(|| Sha256::digest(black_box(body)))
            });
            group.bench_with_input(BenchmarkId::new("key", variant), &document, |b, body| {
                b.iter(|| layer.key_for(black_box(&json), black_box(body)))
            });
            // Measured against the input's length too, so the ratios read
            // against the `sha2` line above.
            group.bench_with_input(
                BenchmarkId::new("sha2", format!("{variant}_canonical")),
                &canonical,
                |b, canonical| b.iter(|| Sha256::digest(black_box(canonical))),
            );
            group.bench_with_input(
                BenchmarkId::new("canonical", variant),
                &document,
                |b, body| b.iter(|| canonical_json(black_box(body), &[])),
            );
        }
        group.finish();
    }
}

/// The calling thread's CPU time, as criterion's measurement.
struct ThreadCpuTime(WallTime);

fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid `timespec` for the call to write.
    let result = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    assert_eq!(result, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

impl Measurement for ThreadCpuTime {
    type Intermediate = Duration;
    type Value = Duration;

    fn start(&self) -> Duration {
        thread_cpu_time()
    }

    fn end(&self, started: Duration) -> Duration {
        thread_cpu_time().saturating_sub(started)
    }

    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }

    fn zero(&self) -> Duration {
        Duration::ZERO
    }

    fn to_f64(&self, value: &Duration) -> f64 {
        value.as_nanos() as f64
    }

    fn formatter(&self) -> &dyn ValueFormatter {
        self.0.formatter()
    }
}

fn benches() {
    if std::env::var_os("KEY_BENCH_WALL").is_some() {
        let mut criterion = Criterion::default().configure_from_args();
        bench_key(&mut criterion);
    } else {
        let mut criterion = Criterion::default()
            .with_measurement(ThreadCpuTime(WallTime))
            .configure_from_args();
        bench_key(&mut criterion);
    }
}

criterion_main!(benches);
