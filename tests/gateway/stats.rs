//! `GET /_idempotency/stats`: this process's counters and the fleet's.

use crate::{
    harness::{post_json, send, until, Gateway},
    support::redis_server::RedisServer,
    upstream::Upstream,
};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_report_the_process_and_the_fleet() {
    let redis = RedisServer::start();
    let upstream = Upstream::echo().await;
    let gateway = Gateway::start(&["--upstream", &upstream.url(), "--redis", &redis.url()]);

    let first = send(post_json(
        &gateway.url("/v1/chat/completions"),
        r#"{"q":1}"#,
    ))
    .await;
    assert_eq!(
        first.cache_status(),
        "tower-idempotency; fwd=uri-miss; stored"
    );
    assert!(
        until(Duration::from_secs(5), || async {
            gateway.stats().await["process"]["stored"] == 1
        })
        .await
    );
    let second = send(post_json(
        &gateway.url("/v1/chat/completions"),
        r#"{ "q": 1 }"#,
    ))
    .await;
    assert!(second.cache_status().contains("; hit"), "{second:?}");

    let stats = gateway.stats().await;
    let process = &stats["process"];
    assert_eq!(process["requests"], 2, "{stats}");
    assert_eq!(process["misses"], 1);
    assert_eq!(process["hits"]["l1"], 1);
    assert_eq!(process["upstream_calls"], 1);
    assert_eq!(process["calls_saved"], 1);
    assert_eq!(process["stored"], 1);
    assert_eq!(process["bytes_saved"], first.body.len());
    assert_eq!(process["store"]["errors"], 0);
    let fleet = &stats["fleet"];
    assert!(
        fleet.is_object(),
        "with --redis the fleet totals are there: {stats}"
    );
    assert_eq!(fleet["upstream_calls"], 1);
    assert_eq!(fleet["misses"], 1);
    assert_eq!(fleet["stored"], 1);
    // The stats requests themselves never reach the upstream.
    assert_eq!(upstream.calls.get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_the_fleet_is_null() {
    let upstream = Upstream::echo().await;
    let gateway = Gateway::start(&["--upstream", &upstream.url()]);
    let stats = gateway.stats().await;
    assert!(stats["fleet"].is_null(), "{stats}");
    assert_eq!(stats["process"]["requests"], 0);
    assert_eq!(upstream.calls.get(), 0);
}
