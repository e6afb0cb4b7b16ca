//! The gateway's memory under a flood of unique misses, against its L1
//! budget.
//!
//! Starts an upstream on loopback that answers every request with about
//! `--body-bytes` of JSON, runs the gateway binary (`--gateway`, built
//! beforehand) in front of it with `--l1-capacity`, sends unique POSTs from
//! `--concurrency` clients for `--duration` seconds, and prints the
//! gateway's resident set (`VmRSS` from `/proc`, Linux only) every
//! `--every` seconds, with the requests so far and what L1 holds (entries
//! and weighed bytes, from `/_idempotency/stats`).
//! Every request is a miss whose response is offered to L1, so L1 stays
//! full and turns over all the time.
//!
//! ```text
//! cargo build --release --example gateway
//! cargo run --release --example gateway_load -- --l1-capacity 16M --duration 60
//! ```

use std::{
    net::SocketAddr,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use axum::{body::Bytes, extract::Request, Router};
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use serde_json::Value;

#[derive(Parser, Debug)]
#[command(about = "Resident memory of the gateway under unique misses, against its L1 budget")]
struct Args {
    /// The gateway binary.
    #[arg(long, default_value = "target/release/examples/gateway")]
    gateway: String,
    /// The gateway's `--l1-capacity`.
    #[arg(long, default_value = "16M")]
    l1_capacity: String,
    /// Seconds of load.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Concurrent clients, each one request at a time.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds between two samples.
    #[arg(long, default_value_t = 5)]
    every: u64,
    /// Bytes of each upstream answer.
    #[arg(long, default_value_t = 700)]
    body_bytes: usize,
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

const MIB: f64 = 1024.0 * 1024.0;

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let upstream = upstream(args.body_bytes).await;

    let mut child = Command::new(&args.gateway)
        .args(["--listen", "127.0.0.1:0", "--upstream"])
        .arg(format!("http://{upstream}"))
        .args(["--l1-capacity", &args.l1_capacity])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot run {}: {error}", args.gateway));
    let pid = child.id();
    let gateway = listening_on(child.stdout.take().expect("piped stdout"));

    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let sent = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for worker in 0..args.concurrency {
        let (client, sent, failed, stop) = (
            client.clone(),
            Arc::clone(&sent),
            Arc::clone(&failed),
            Arc::clone(&stop),
        );
        workers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let body = format!(
                    r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"question {worker}-{n}"}}]}}"#
                );
                let request = http::Request::post(format!("http://{gateway}/v1/chat/completions"))
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body)))
                    .expect("a valid request");
                let ok = match client.request(request).await {
                    Ok(response) => {
                        response.status().is_success() && response.into_body().collect().await.is_ok()
                    }
                    Err(_) => false,
                };
                if ok {
                    sent.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }

    println!(
        "gateway --l1-capacity {}, {} clients, unique misses of {} bytes",
        args.l1_capacity, args.concurrency, args.body_bytes
    );
    println!();
    println!("| t (s) | requests | req/s | L1 entries | L1 weighed (MiB) | VmRSS (MiB) |");
    println!("|---|---|---|---|---|---|");
    let started = Instant::now();
    let mut last = (0u64, started);
    let end = started + Duration::from_secs(args.duration);
    loop {
        let next = (Instant::now() + Duration::from_secs(args.every)).min(end);
        tokio::time::sleep_until(next.into()).await;
        let now = Instant::now();
        let requests = sent.load(Ordering::Relaxed);
        let rate = (requests - last.0) as f64 / now.duration_since(last.1).as_secs_f64();
        last = (requests, now);
        let stats = stats(&client, gateway).await;
        let entries = stats["l1"]["entries"].as_u64().unwrap_or(0);
        let weighed = stats["l1"]["weighed_bytes"].as_u64().unwrap_or(0) as f64 / MIB;
        println!(
            "| {:.0} | {requests} | {rate:.0} | {entries} | {weighed:.1} | {} |",
            now.duration_since(started).as_secs_f64(),
            rss_mib(pid).map_or("n/a".into(), |mib| format!("{mib:.1}")),
        );
        if now >= end {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        let _ = worker.await;
    }
    println!();
    println!("failed requests: {}", failed.load(Ordering::Relaxed));
    let _ = child.kill();
    let _ = child.wait();
}

/// An upstream answering every request with a fresh JSON body of about
/// `size` bytes.
async fn upstream(size: usize) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the upstream");
    let addr = listener.local_addr().expect("the upstream's address");
    let counter = Arc::new(AtomicU64::new(0));
    let router = Router::new().fallback(move |_: Request| {
        let n = counter.fetch_add(1, Ordering::Relaxed);
        async move {
            let filler = "x".repeat(size.saturating_sub(60));
            (
                [("content-type", "application/json")],
                format!(r#"{{"id":"chatcmpl-{n}","object":"chat.completion","text":"{filler}"}}"#),
            )
        }
    });
    tokio::spawn(async move {
        axum::serve(listener, router)
            .await
            .expect("serve the upstream");
    });
    addr
}

/// Waits for the gateway's `listening on ADDR` line.
fn listening_on(stdout: std::process::ChildStdout) -> SocketAddr {
    use std::io::{BufRead, BufReader};
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the gateway's stdout");
    line.trim()
        .strip_prefix("listening on ")
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line from the gateway: {line:?}"))
}

async fn stats(client: &HttpClient, gateway: SocketAddr) -> Value {
    let request = http::Request::get(format!("http://{gateway}/_idempotency/stats"))
        .body(Full::default())
        .expect("a valid request");
    match client.request(request).await {
        Ok(response) => match response.into_body().collect().await {
            Ok(body) => serde_json::from_slice(&body.to_bytes()).unwrap_or(Value::Null),
            Err(_) => Value::Null,
        },
        Err(_) => Value::Null,
    }
}

/// The resident set of process `pid`, in MiB.
fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024.0 / MIB)
}
