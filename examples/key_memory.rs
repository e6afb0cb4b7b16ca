//! What deriving a key costs in memory: peak RSS (`VmHWM`) while keying a
//! 16 MiB JSON body, against a baseline that only holds the body.
//!
//! ```text
//! cargo run --release --example key_memory
//! cargo run --release --example key_memory -- --mib 64 --threads 4
//! ```
//!
//! Linux only: the peak is read from `/proc/self/status` and reset between
//! measurements by writing `5` to `/proc/self/clear_refs`.

use std::{fs, thread};

use http::Request;
use tower_idempotency::IdempotencyLayer;

/// Peak resident set size in KiB, or 0 where `/proc` has no answer.
fn peak_kib() -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Resets the peak to the current resident set size.
fn reset_peak() {
    if let Err(error) = fs::write("/proc/self/clear_refs", "5") {
        eprintln!("cannot reset the peak ({error}): figures include earlier peaks");
    }
}

/// `[0,0,…]`: the most values per byte.
fn zeros(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 2);
    out.push(b'[');
    while out.len() + 3 < len {
        out.extend_from_slice(b"0,");
    }
    out.extend_from_slice(b"0]");
    out
}

/// `{"a0":0,"a1":0,…}`: the most members per byte, sorted on the way.
fn members(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    out.push(b'{');
    // Short names (`"a1f":0,` is 9 bytes), written in descending order so
    // the sort has work to do.
    let mut i = (len / 9) as u64;
    while out.len() + 32 < len && i > 0 {
        out.extend_from_slice(format!("\"a{i:x}\":0,").as_bytes());
        i -= 1;
    }
    out.extend_from_slice(b"\"z\":0}");
    out
}

/// A chat-completions request: a few long messages with escapes.
fn chat(len: usize) -> Vec<u8> {
    let turn = 64 * 1024;
    let content = "Summarise the \\\"quarterly\\\" figures for each region.\\n".repeat(turn / 56);
    let mut out = String::with_capacity(len + turn);
    out.push_str(r#"{"model":"gpt-4o-mini","temperature":0.2,"messages":["#);
    let mut first = true;
    while out.len() + content.len() + 64 < len {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(r#"{"role":"user","content":""#);
        out.push_str(&content);
        out.push_str(r#""}"#);
    }
    out.push_str(r#"],"user":"u-1"}"#);
    out.into_bytes()
}

/// Makes a body of about the given length.
type Shape = fn(usize) -> Vec<u8>;

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut mib, mut threads) = (16usize, 1usize);
    while let Some(arg) = args.next() {
        let value = args.next().and_then(|v| v.parse().ok());
        match (arg.as_str(), value) {
            ("--mib", Some(v)) => mib = v,
            ("--threads", Some(v)) => threads = v,
            _ => {
                eprintln!("usage: key_memory [--mib N] [--threads N]");
                std::process::exit(2);
            }
        }
    }
    let layer = IdempotencyLayer::builder()
        .max_request_body(usize::MAX)
        .build();
    let (head, ()) = Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(())
        .unwrap()
        .into_parts();
    let len = mib * 1024 * 1024;
    println!("{threads} concurrent key(s) of a {mib} MiB body each; peak RSS above the baseline");
    println!(
        "{:<24} {:>12} {:>12} {:>10}",
        "body", "baseline", "keying", "extra/body"
    );
    let shapes: [(&str, Shape); 3] = [
        ("[0,0,…]", zeros),
        ("{\"a0\":0,…}", members),
        ("chat (escaped prose)", chat),
    ];
    for (name, make) in shapes {
        let bodies: Vec<Vec<u8>> = (0..threads).map(|_| make(len)).collect();
        let total: usize = bodies.iter().map(Vec::len).sum();
        reset_peak();
        let baseline = peak_kib();
        thread::scope(|scope| {
            for body in &bodies {
                let (layer, head) = (&layer, &head);
                scope.spawn(move || layer.key_for(head, body).expect("a key"));
            }
        });
        let peak = peak_kib();
        let extra = peak.saturating_sub(baseline) as f64 * 1024.0;
        println!(
            "{name:<24} {:>9} MiB {:>9} MiB {:>9.2}x",
            baseline / 1024,
            peak / 1024,
            extra / total as f64
        );
        drop(bodies);
    }
}
