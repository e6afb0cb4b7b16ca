//! What the gateway forwards, what it strips, and what it answers when the
//! upstream is unreachable.

use std::net::TcpListener;

use axum::{response::IntoResponse, routing::get, Router};
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::Value;

use crate::{
    harness::{get as get_request, send, Gateway},
    support::Calls,
    upstream::Upstream,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_forwarded_under_the_base_path_without_hop_by_hop_headers() {
    let upstream = Upstream::echo().await;
    let gateway = Gateway::start(&["--upstream", &format!("{}/base/", upstream.url())]);

    let request = Request::put(gateway.url("/v1/items/7?b=2&a=1"))
        .header("x-custom", "kept")
        .header("authorization", "Bearer sk-test")
        .header("connection", "x-hop")
        .header("x-hop", "dropped")
        .header("proxy-authorization", "Basic dropped")
        .body(Full::new(Bytes::from_static(b"payload")))
        .unwrap();
    let answer = send(request).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    // PUT is not eligible: forwarded as is.
    assert_eq!(answer.cache_status(), "tower-idempotency; fwd=method");

    let received = upstream.received();
    assert_eq!(received.len(), 1);
    let seen = &received[0];
    assert_eq!(seen.method, "PUT");
    assert_eq!(seen.target, "/base/v1/items/7?b=2&a=1");
    assert_eq!(seen.headers["x-custom"], "kept");
    assert_eq!(seen.headers["authorization"], "Bearer sk-test");
    assert_eq!(seen.headers["host"], upstream.addr.to_string());
    for hop in ["x-hop", "proxy-authorization"] {
        assert!(
            !seen.headers.contains_key(hop),
            "{hop} reached the upstream"
        );
    }
    assert!(seen
        .headers
        .get("connection")
        .is_none_or(|value| !value.to_str().unwrap().contains("x-hop")));
    assert_eq!(seen.body_len, 7);

    let echo: Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(echo["target"], "/base/v1/items/7?b=2&a=1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_headers_pass_through_without_hop_by_hop_ones() {
    let calls = Calls::default();
    let router = Router::new().route(
        "/v1/h",
        get({
            let calls = calls.clone();
            move || {
                calls.inc();
                async {
                    (
                        [
                            ("x-kept", "yes"),
                            ("connection", "x-up-hop"),
                            ("x-up-hop", "no"),
                        ],
                        "hello",
                    )
                        .into_response()
                }
            }
        }),
    );
    let upstream = Upstream::serve(router, calls).await;
    let gateway = Gateway::start(&["--upstream", &upstream.url()]);
    let answer = send(get_request(&gateway.url("/v1/h"))).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, "hello");
    assert_eq!(answer.header("x-kept"), Some("yes"));
    assert_eq!(answer.header("x-up-hop"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_upstream_is_answered_502_and_not_stored() {
    // A port nothing listens on any more.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gateway = Gateway::start(&["--upstream", &format!("http://127.0.0.1:{port}")]);
    for _ in 0..2 {
        let answer = send(get_request(&gateway.url("/v1/models"))).await;
        assert_eq!(answer.status, 502);
        assert_eq!(answer.cache_status(), "tower-idempotency; fwd=uri-miss");
    }
    let stats = gateway.stats().await;
    assert_eq!(stats["process"]["upstream_calls"], 2, "{stats}");
    assert_eq!(stats["process"]["stored"], 0);
}

/// `Connection` can name any header as hop-by-hop, credentials included:
/// the request is keyed as it is forwarded, without them, so an answer made
/// without credentials is never replayed to a caller who sends them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_the_connection_header_names_is_not_in_the_key() {
    let upstream = Upstream::echo().await;
    let gateway = Gateway::start(&["--upstream", &upstream.url()]);
    let ask = |connection: Option<&str>| {
        let mut request = Request::post(gateway.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .header("authorization", "Bearer sk-B");
        if let Some(connection) = connection {
            request = request.header("connection", connection);
        }
        request
            .body(Full::new(Bytes::from_static(b"{\"q\":1}")))
            .unwrap()
    };

    let stripped = send(ask(Some("close, authorization"))).await;
    assert_eq!(stripped.status, 200, "{stripped:?}");
    let echo: Value = serde_json::from_slice(&stripped.body).unwrap();
    assert!(
        echo["headers"].get("authorization").is_none(),
        "hop-by-hop: the upstream sees no credentials"
    );

    let plain = send(ask(None)).await;
    let echo: Value = serde_json::from_slice(&plain.body).unwrap();
    assert_eq!(
        echo["headers"]["authorization"], "Bearer sk-B",
        "answered from the upstream with credentials, not replayed: {plain:?}"
    );
    assert_eq!(echo["call"], 2);
    assert_eq!(upstream.calls.get(), 2);
}
