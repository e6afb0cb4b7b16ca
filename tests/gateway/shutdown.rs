//! SIGTERM and Ctrl-C: stop accepting, let calls in flight finish, exit 0.

use std::{net::TcpStream, sync::Arc, time::Duration};

use serde_json::Value;
use tokio::{sync::Semaphore, time::timeout};

use crate::{
    harness::{post_json, send, until, Gateway},
    upstream::Upstream,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_call_in_flight_finish_then_exits_zero() {
    let gate = Arc::new(Semaphore::new(0));
    let upstream = Upstream::echo_gated(Arc::clone(&gate)).await;
    let mut gateway = Gateway::start(&["--upstream", &upstream.url()]);

    let call = tokio::spawn(send(post_json(
        &gateway.url("/v1/chat/completions"),
        r#"{"prompt":"a slow one"}"#,
    )));
    assert!(
        until(Duration::from_secs(10), || async {
            upstream.calls.get() == 1
        })
        .await,
        "the call reaches the upstream"
    );

    gateway.signal("TERM");
    // Shutting down: no new connections, but the process waits for the call.
    let refused = until(Duration::from_secs(5), || async {
        TcpStream::connect(gateway.addr()).is_err()
    })
    .await;
    assert!(refused, "the gateway stops accepting connections");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        gateway.exited().is_none(),
        "the gateway waits for the call in flight"
    );

    gate.add_permits(1);
    let answer = timeout(Duration::from_secs(10), call)
        .await
        .expect("the call in flight is answered")
        .unwrap();
    assert_eq!(answer.status, 200);
    let echo: Value = serde_json::from_slice(&answer.body).expect("the whole response");
    assert_eq!(echo["call"], 1);
    assert_eq!(echo["target"], "/v1/chat/completions");

    let status = gateway.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{}", gateway.log());
    assert_eq!(
        gateway.stdout_lines().len(),
        1,
        "stdout holds only the `listening on` line"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_an_idle_gateway_with_status_zero() {
    let upstream = Upstream::echo().await;
    let mut gateway = Gateway::start(&["--upstream", &upstream.url()]);
    // A connection the client keeps alive does not hold the gateway up.
    let _ = send(post_json(&gateway.url("/v1/x"), "{}")).await;
    gateway.signal("INT");
    let status = gateway.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{}", gateway.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_right_after_the_listening_line_still_exits_zero() {
    let upstream = Upstream::echo().await;
    let mut gateway = Gateway::start(&["--upstream", &upstream.url()]);
    gateway.signal("TERM");
    let status = gateway.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{}", gateway.log());
}
