//! Connections are bounded: a client that stalls is disconnected, an idle
//! one is closed, and idle connections never keep a real request out, even
//! past the process's file-descriptor limit.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{body::Body, extract::Request, routing::post, Router};
use http_body_util::BodyExt;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::timeout,
};

use crate::{
    harness::{post_json, send, until, Gateway},
    support::Calls,
    upstream::Upstream,
};

/// Writes `bytes` to a new connection and waits for the gateway to close
/// it, for at most `limit`. Returns how long that took and what the gateway
/// sent before closing.
async fn closed_after(addr: SocketAddr, bytes: &[u8], limit: Duration) -> (Duration, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let started = Instant::now();
    let mut received = Vec::new();
    let closed = timeout(limit, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let received = String::from_utf8_lossy(&received).into_owned();
    assert!(
        closed.is_ok(),
        "still connected after {limit:?}; received {received:?}"
    );
    (started.elapsed(), received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_head_is_disconnected_within_the_header_timeout() {
    let upstream = Upstream::echo().await;
    let gateway = Gateway::start(&["--upstream", &upstream.url(), "--header-timeout", "1"]);
    let (elapsed, _) = closed_after(
        gateway.addr(),
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-ty",
        Duration::from_secs(10),
    )
    .await;
    assert!(elapsed >= Duration::from_millis(900), "{elapsed:?}");
    assert_eq!(upstream.calls.get(), 0);
}

/// A body that stops arriving, small enough to be buffered for the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_body_is_aborted_within_the_body_timeout() {
    let upstream = Upstream::echo().await;
    let gateway = Gateway::start(&["--upstream", &upstream.url(), "--body-timeout", "1"]);
    let (elapsed, answer) = closed_after(
        gateway.addr(),
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n{\"model\":",
        Duration::from_secs(10),
    )
    .await;
    assert!(elapsed >= Duration::from_millis(900), "{elapsed:?}");
    assert!(answer.starts_with("HTTP/1.1 4"), "{answer:?}");
    assert_eq!(upstream.calls.get(), 0);
}

/// A body too large to buffer goes to the upstream as it arrives: when it
/// stalls, both connections are let go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_pass_through_body_releases_the_upstream_connection() {
    let outcomes: Arc<Mutex<Vec<Result<usize, String>>>> = Arc::default();
    let router = Router::new().route(
        "/v1/upload",
        post({
            let outcomes = Arc::clone(&outcomes);
            move |request: Request| async move {
                let read = request.into_body().collect().await;
                outcomes.lock().unwrap().push(
                    read.map(|body| body.to_bytes().len())
                        .map_err(|error| error.to_string()),
                );
                Body::empty()
            }
        }),
    );
    let upstream = Upstream::serve(router, Calls::default()).await;
    let gateway = Gateway::start(&[
        "--upstream",
        &upstream.url(),
        "--body-timeout",
        "1",
        "--max-body",
        "16",
    ]);
    let mut head =
        b"POST /v1/upload HTTP/1.1\r\nhost: x\r\ncontent-length: 1048576\r\n\r\n".to_vec();
    head.extend_from_slice(&[b'x'; 64 * 1024]);
    closed_after(gateway.addr(), &head, Duration::from_secs(10)).await;
    assert!(
        until(Duration::from_secs(10), || async {
            !outcomes.lock().unwrap().is_empty()
        })
        .await,
        "the upstream's request ended"
    );
    let outcome = outcomes.lock().unwrap()[0].clone();
    assert!(outcome.is_err(), "{outcome:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_after_the_keepalive_timeout() {
    let upstream = Upstream::echo().await;
    let gateway = Gateway::start(&["--upstream", &upstream.url(), "--keepalive-timeout", "1"]);
    // One that never sends anything.
    let (elapsed, _) = closed_after(gateway.addr(), b"", Duration::from_secs(10)).await;
    assert!(elapsed >= Duration::from_millis(900), "{elapsed:?}");
    // One kept alive after a complete exchange.
    let (elapsed, answer) = closed_after(
        gateway.addr(),
        b"GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n",
        Duration::from_secs(10),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(elapsed >= Duration::from_millis(900), "{elapsed:?}");
    assert_eq!(upstream.calls.get(), 1);
}

/// The incident: idle sockets beyond the file-descriptor limit made the
/// gateway log accept errors in a loop while real clients timed out.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_idle_connections_than_file_descriptors_do_not_keep_a_request_out() {
    const FD_LIMIT: u64 = 256;
    let upstream = Upstream::echo().await;
    // Default timeouts: the idle connections would be kept for a minute.
    let gateway = Gateway::start_with_fd_limit(&["--upstream", &upstream.url()], FD_LIMIT);
    let mut idle = Vec::new();
    for _ in 0..FD_LIMIT * 3 / 2 {
        // A gateway that stopped accepting fills its listen queue.
        match timeout(Duration::from_secs(2), TcpStream::connect(gateway.addr())).await {
            Ok(Ok(stream)) => idle.push(stream),
            Ok(Err(error)) => panic!("connect: {error}"),
            Err(_) => break,
        }
    }
    assert!(
        idle.len() as u64 > FD_LIMIT,
        "{} idle connections",
        idle.len()
    );
    let started = Instant::now();
    let answer = timeout(
        Duration::from_secs(20),
        send(post_json(&gateway.url("/v1/chat/completions"), "{}")),
    )
    .await
    .expect("the request is served");
    assert_eq!(answer.status, 200);
    assert!(started.elapsed() < Duration::from_secs(20));
    let log = gateway.log();
    let accept_errors = log.matches("accept error").count();
    assert!(accept_errors < 10, "{accept_errors} accept errors");
    assert!(
        log.contains("connection limit reached"),
        "the limit is below the descriptors: {log}"
    );
    drop(idle);
}
