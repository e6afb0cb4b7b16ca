//! The gateway's own endpoints: the dashboard page, the `history` ring in
//! the stats, Prometheus metrics and the health check. None of them reaches
//! the upstream.

use std::time::Duration;

use serde_json::Value;

use crate::{
    harness::{get, post_json, send, start_refused, Gateway},
    support::redis_server::RedisServer,
    upstream::Upstream,
};

async fn health(gateway: &Gateway) -> Value {
    let answer = send(get(&gateway.url("/_idempotency/health"))).await;
    assert_eq!(answer.status, 200, "health answers 200 while serving");
    assert_eq!(answer.header("content-type"), Some("application/json"));
    serde_json::from_slice(&answer.body).expect("health answers JSON")
}

/// Polls `read` every 20 ms until `check` holds of what it returned, for
/// at most `limit`; returns the last value read, and whether it held.
async fn poll<F, Fut>(limit: Duration, read: F, check: impl Fn(&Value) -> bool) -> (bool, Value)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Value>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let value = read().await;
        if check(&value) {
            return (true, value);
        }
        if tokio::time::Instant::now() >= deadline {
            return (false, value);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every `src`/`href` attribute value in `page`, however quoted.
fn links(page: &str) -> Vec<String> {
    let lower = page.to_ascii_lowercase();
    let mut found = Vec::new();
    for attribute in ["src=", "href="] {
        let mut rest = lower.as_str();
        while let Some(at) = rest.find(attribute) {
            let value = rest[at + attribute.len()..].trim_start_matches(['"', '\'']);
            let end = value.find(['"', '\'', ' ', '>']).unwrap_or(value.len());
            found.push(value[..end].to_owned());
            rest = &value[end..];
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_is_one_self_contained_page() {
    let upstream = Upstream::echo().await;
    let gateway = Gateway::start(&["--upstream", &upstream.url()]);

    for path in ["/_idempotency/", "/_idempotency"] {
        let answer = send(get(&gateway.url(path))).await;
        assert_eq!(answer.status, 200, "{path}: {answer:?}");
        assert_eq!(
            answer.header("content-type"),
            Some("text/html; charset=utf-8")
        );
        let page = std::str::from_utf8(&answer.body).expect("the page is UTF-8");
        assert!(page.starts_with("<!doctype html>"), "{path}");
        for id in [
            "process-requests",
            "process-hit-rate",
            "process-calls-saved",
            "process-tokens-saved",
            "process-money-saved",
            "fleet-requests",
            "chart",
            "top-entries",
            "tenants",
        ] {
            assert!(page.contains(&format!("id=\"{id}\"")), "{id} missing");
        }
        // Nothing is loaded from elsewhere: it works with no internet.
        let links = links(page);
        assert!(
            links.iter().all(|link| !link.starts_with("http:")
                && !link.starts_with("https:")
                && !link.starts_with("//")),
            "{links:?}"
        );
        assert!(!page.contains("http://") && !page.contains("https://"));
        assert!(!page.contains("@import") && !page.contains("url("));
        // The page reads the stats by their absolute path, so that it works
        // at `/_idempotency` too.
        assert!(page.contains("\"/_idempotency/stats\""));
    }
    // The gateway's namespace is its own: an unknown path there is 404.
    let unknown = send(get(&gateway.url("/_idempotency/nothing-here"))).await;
    assert_eq!(unknown.status, 404);
    let unknown = send(post_json(&gateway.url("/_idempotency/stats/x"), "{}")).await;
    assert_eq!(unknown.status, 404);
    assert_eq!(upstream.calls.get(), 0, "nothing was forwarded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_ring_keeps_its_last_slots() {
    let upstream = Upstream::echo().await;
    let gateway = Gateway::start(&[
        "--upstream",
        &upstream.url(),
        "--history-interval",
        "0.1",
        "--history-slots",
        "5",
    ]);
    let first = gateway.stats().await;
    assert_eq!(first["history_interval_ms"], 100, "{first}");
    assert!(first["history"].as_array().unwrap().len() <= 5);

    let url = gateway.url("/v1/chat/completions");
    send(post_json(&url, r#"{"q":"ring"}"#)).await;
    send(post_json(&url, r#"{"q":"ring"}"#)).await;
    send(post_json(&url, r#"{"q":"ring"}"#)).await;
    // The requests land in a slot once its interval is over.
    let counted = |stats: &Value, field: &str| -> u64 {
        stats["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|slot| slot[field].as_u64().unwrap())
            .sum()
    };
    let (held, seen) = poll(
        Duration::from_secs(5),
        || gateway.stats(),
        |seen| counted(seen, "misses") == 1 && counted(seen, "hits") == 2,
    )
    .await;
    assert!(held, "{seen}");
    // More intervals than slots: the ring holds exactly its bound, the
    // oldest slots gone (the requests' slot with them).
    let (held, seen) = poll(
        Duration::from_secs(5),
        || gateway.stats(),
        |seen| counted(seen, "hits") == 0,
    )
    .await;
    assert!(held, "{seen}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = gateway.stats().await;
    let history = stats["history"].as_array().unwrap();
    assert_eq!(history.len(), 5, "{stats}");
    let times: Vec<u64> = history
        .iter()
        .map(|slot| slot["at"].as_u64().unwrap())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "oldest first: {times:?}"
    );
    assert_eq!(
        stats["process"]["hits"]["l1"], 2,
        "the counters keep it all"
    );
    assert_eq!(upstream.calls.get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_flags_are_checked_and_documented() {
    let (status, help) = start_refused(&["--help"]);
    assert!(status.success());
    for text in [
        "--history-interval",
        "--history-slots",
        "[default: 10]",
        "[default: 360]",
    ] {
        assert!(help.contains(text), "{text} missing from:\n{help}");
    }
    for bad in [
        ["--history-slots", "0"],
        ["--history-slots", "100001"],
        ["--history-interval", "0"],
        ["--history-interval", "0.001"],
    ] {
        let (status, output) = start_refused(&["--upstream", "http://127.0.0.1:1", bad[0], bad[1]]);
        assert_eq!(status.code(), Some(2), "{bad:?}: {output}");
        assert!(output.contains(bad[0]), "{bad:?}: {output}");
    }
}

#[cfg(feature = "metrics")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_the_requests_in_prometheus_text() {
    let upstream = Upstream::echo().await;
    let gateway = Gateway::start(&["--upstream", &upstream.url()]);
    let url = gateway.url("/v1/chat/completions");
    for body in [r#"{"q":1}"#, r#"{"q":1}"#, r#"{"q":1}"#, r#"{"q":2}"#] {
        assert_eq!(send(post_json(&url, body)).await.status, 200);
    }
    let bypassed = send(
        http::Request::post(&url)
            .header("content-type", "application/json")
            .header("cache-control", "no-store")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
            .unwrap(),
    )
    .await;
    assert_eq!(bypassed.status, 200);

    let answer = send(get(&gateway.url("/_idempotency/metrics"))).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(answer
        .header("content-type")
        .is_some_and(|value| value.starts_with("text/plain")));
    let text = String::from_utf8(answer.body.to_vec()).unwrap();
    let value = |series: &str| -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .map(|value| value.trim().parse().unwrap())
    };
    assert!(
        text.contains("# TYPE tower_idempotency_requests_total counter"),
        "{text}"
    );
    assert_eq!(
        value(r#"tower_idempotency_requests_total{cache="miss"}"#),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        value(r#"tower_idempotency_requests_total{cache="hit_l1"}"#),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        value(r#"tower_idempotency_requests_total{cache="bypass"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(r#"tower_idempotency_requests_total{cache="hit_l2"}"#),
        None,
        "{text}"
    );
    assert!(value("tower_idempotency_bytes_saved_total").is_some_and(|bytes| bytes > 0.0));
    // The admin endpoints themselves are not requests to the layer.
    let again = send(get(&gateway.url("/_idempotency/metrics"))).await;
    let again = String::from_utf8(again.body.to_vec()).unwrap();
    assert!(
        again.contains(r#"tower_idempotency_requests_total{cache="miss"} 2"#),
        "{again}"
    );
    assert_eq!(upstream.calls.get(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_says_whether_redis_answers() {
    let redis = RedisServer::start();
    let upstream = Upstream::echo().await;
    let gateway = Gateway::start(&["--upstream", &upstream.url(), "--redis", &redis.url()]);

    let up = health(&gateway).await;
    assert_eq!(up["status"], "serving", "{up}");
    assert_eq!(up["store"], "redis");
    assert_eq!(up["redis"]["reachable"], true, "{up}");
    assert_eq!(up["redis"]["breaker"], "closed", "{up}");
    assert_eq!(up["store_health"]["errors"], 0, "{up}");

    redis.kill();
    let (held, seen) = poll(
        Duration::from_secs(10),
        || health(&gateway),
        |seen| seen["redis"]["reachable"] == false,
    )
    .await;
    assert!(held, "{seen}");
    assert!(seen["redis"]["error"].is_string(), "{seen}");
    // Failed probes count as store errors; after enough of them the
    // breaker opens and a probe is not even sent.
    let (held, seen) = poll(
        Duration::from_secs(10),
        || health(&gateway),
        |seen| seen["redis"]["breaker"] == "open",
    )
    .await;
    assert!(held, "{seen}");
    assert_eq!(seen["status"], "serving");
    assert!(
        seen["store_health"]["skipped"].as_u64().unwrap() > 0,
        "{seen}"
    );

    // The gateway still serves, without its store.
    let answer = send(post_json(&gateway.url("/v1/x"), r#"{"q":1}"#)).await;
    assert_eq!(answer.status, 200);

    redis.restart();
    let (held, seen) = poll(
        Duration::from_secs(15),
        || health(&gateway),
        |seen| seen["redis"]["reachable"] == true && seen["redis"]["breaker"] == "closed",
    )
    .await;
    assert!(held, "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_without_a_shared_store() {
    let upstream = Upstream::echo().await;
    let gateway = Gateway::start(&["--upstream", &upstream.url()]);
    let health = health(&gateway).await;
    assert_eq!(health["status"], "serving", "{health}");
    assert_eq!(health["store"], "memory");
    assert!(health["redis"].is_null(), "{health}");
    let stats = gateway.stats().await;
    assert!(stats["top_entries"].is_null(), "{stats}");
    assert_eq!(stats["store"], "memory");
    assert_eq!(upstream.calls.get(), 0);
}

/// Sends the same prompt as `credential`'s tenant.
async fn ask_as(gateway: &Gateway, credential: &str) {
    let mut request = post_json(
        &gateway.url("/v1/chat/completions"),
        r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#,
    );
    request.headers_mut().insert(
        "authorization",
        http::HeaderValue::from_str(&format!("Bearer {credential}")).unwrap(),
    );
    assert_eq!(send(request).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_counted_under_a_keyed_hash_shared_through_a_secret_file() {
    let upstream = Upstream::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("tenant-secret");
    std::fs::write(&secret, "fleet secret").unwrap();
    let start = || {
        Gateway::start(&[
            "--upstream",
            &upstream.url(),
            "--tenants",
            "2",
            "--tenant-secret-file",
            secret.to_str().unwrap(),
        ])
    };
    let gateway = start();
    for _ in 0..3 {
        ask_as(&gateway, "sk-alice").await;
    }
    ask_as(&gateway, "sk-bob").await;
    // A third tenant in a table of two takes the lightest one's place.
    ask_as(&gateway, "sk-carol").await;
    let stats = gateway.stats().await;
    let tenants = stats["tenants"].as_array().unwrap().clone();
    assert_eq!(tenants.len(), 2, "{stats}");
    assert_eq!(tenants[0]["requests"], 3);
    assert_eq!(tenants[0]["calls_saved"], 3 - 1);
    assert_eq!(tenants[1]["overcount"], 1, "carol inherited bob's count");
    assert!(!stats.to_string().contains("sk-"), "{stats}");
    let alice = tenants[0]["tenant"].as_str().unwrap().to_owned();
    assert_eq!(alice.len(), 16);

    // Another gateway with the same secret names alice alike.
    let other = start();
    ask_as(&other, "sk-alice").await;
    assert_eq!(other.stats().await["tenants"][0]["tenant"], alice.as_str());
    assert_eq!(upstream.calls.get(), 4);
}

#[test]
fn the_tenant_flags_are_checked_and_documented() {
    let (status, help) = start_refused(&["--help"]);
    assert!(status.success());
    for text in ["--tenants", "--tenant-secret-file", "[default: 100]"] {
        assert!(help.contains(text), "{text} missing from:\n{help}");
    }
    let (status, output) =
        start_refused(&["--upstream", "http://127.0.0.1:1", "--tenants", "100001"]);
    assert_eq!(status.code(), Some(2), "{output}");
    let (status, output) = start_refused(&[
        "--upstream",
        "http://127.0.0.1:1",
        "--tenant-secret-file",
        "/no/such/file",
    ]);
    assert!(!status.success(), "{output}");
    assert!(output.contains("--tenant-secret-file"), "{output}");
}

#[cfg(unix)]
#[test]
fn a_tenant_secret_file_that_never_ends_is_refused() {
    // A device, or a huge file named by mistake, is refused at once rather
    // than read until memory runs out.
    let (status, output) = start_refused(&[
        "--upstream",
        "http://127.0.0.1:1",
        "--tenant-secret-file",
        "/dev/zero",
    ]);
    assert!(!status.success(), "{output}");
    assert!(output.contains("--tenant-secret-file"), "{output}");
    assert!(output.contains("larger than"), "{output}");

    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "").unwrap();
    let (status, output) = start_refused(&[
        "--upstream",
        "http://127.0.0.1:1",
        "--tenant-secret-file",
        empty.to_str().unwrap(),
    ]);
    assert!(!status.success(), "{output}");
    assert!(output.contains("is empty"), "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_answer_while_a_large_namespace_is_read_for_the_most_replayed() {
    let redis = RedisServer::start();
    let upstream = Upstream::echo().await;
    let gateway = Gateway::start(&["--upstream", &upstream.url(), "--redis", &redis.url()]);
    let url = gateway.url("/v1/chat/completions");
    send(post_json(&url, r#"{"q":1}"#)).await;
    send(post_json(&url, r#"{"q":1}"#)).await;
    // A hundred thousand entries beside the real one: reading them all
    // takes seconds (one round trip per entry).
    let keys = redis.cli(&["--scan"]);
    let entry = keys
        .lines()
        .find(|name| name.ends_with('}'))
        .expect("the entry is in redis");
    let namespace = entry.rsplit_once('{').unwrap().0;
    let script = "for i = 1, tonumber(ARGV[2]) do \
        redis.call('HSET', ARGV[1] .. '{' .. string.format('%064x', i) .. '}', \
        'hits', i % 7, 'created_at', 1, 'meta', '') end return 1";
    assert_eq!(redis.cli(&["eval", script, "0", namespace, "100000"]), "1");

    // Every stats request answers at once, whether the list is read yet or
    // not, and so does the health check.
    for _ in 0..3 {
        let stats = tokio::time::timeout(Duration::from_secs(3), gateway.stats())
            .await
            .expect("the stats answer without waiting for the whole scan");
        assert_eq!(stats["process"]["hits"]["l1"], 1, "{stats}");
        tokio::time::timeout(Duration::from_secs(3), health(&gateway))
            .await
            .expect("the health check answers");
    }
    // The list arrives once it is read.
    let (held, seen) = poll(
        Duration::from_secs(120),
        || gateway.stats(),
        |seen| {
            seen["top_entries"]
                .as_array()
                .is_some_and(|top| top.len() == 10)
        },
    )
    .await;
    assert!(held, "{}", seen["top_entries"]);
    assert_eq!(seen["top_entries"][0]["hits"], 6, "{}", seen["top_entries"]);
    assert_eq!(upstream.calls.get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_admin_address_the_endpoints_are_served_there_only() {
    let upstream = Upstream::echo().await;
    let gateway = Gateway::start(&[
        "--upstream",
        &upstream.url(),
        "--admin-listen",
        "127.0.0.1:0",
        "--tenants",
        "10",
    ]);
    let admin = {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let lines = gateway.stdout_lines();
            if let Some(addr) = lines
                .iter()
                .find_map(|line| line.strip_prefix("admin listening on "))
            {
                break addr.to_owned();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no admin address: {lines:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    ask_as(&gateway, "sk-alice").await;

    // A caller of the proxy sees none of the endpoints, and nothing under
    // the gateway's namespace is forwarded.
    for path in [
        "/_idempotency",
        "/_idempotency/",
        "/_idempotency/stats",
        "/_idempotency/metrics",
        "/_idempotency/health",
    ] {
        let answer = send(get(&gateway.url(path))).await;
        assert_eq!(answer.status, 404, "{path}: {answer:?}");
        let answer = send(post_json(&gateway.url(path), "{}")).await;
        assert_eq!(answer.status, 404, "{path}: {answer:?}");
    }
    // The admin address serves them, and proxies nothing.
    let stats = send(get(&format!("http://{admin}/_idempotency/stats"))).await;
    assert_eq!(stats.status, 200, "{stats:?}");
    let stats: Value = serde_json::from_slice(&stats.body).unwrap();
    assert_eq!(stats["tenants"].as_array().unwrap().len(), 1, "{stats}");
    let page = send(get(&format!("http://{admin}/_idempotency/"))).await;
    assert_eq!(page.status, 200);
    let health = send(get(&format!("http://{admin}/_idempotency/health"))).await;
    assert_eq!(health.status, 200);
    let proxied = send(post_json(
        &format!("http://{admin}/v1/chat/completions"),
        "{}",
    ))
    .await;
    assert_eq!(proxied.status, 404, "{proxied:?}");
    assert_eq!(upstream.calls.get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_runs_only_its_own_script_and_is_not_framed() {
    let upstream = Upstream::echo().await;
    let gateway = Gateway::start(&["--upstream", &upstream.url()]);
    let answer = send(get(&gateway.url("/_idempotency/"))).await;
    assert_eq!(answer.status, 200);
    let policy = answer
        .header("content-security-policy")
        .expect("the dashboard has a content security policy");
    for directive in [
        "default-src 'none'",
        "script-src 'sha256-",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ] {
        assert!(policy.contains(directive), "{directive}: {policy}");
    }
    let scripts = policy
        .split(';')
        .find(|directive| directive.trim().starts_with("script-src"))
        .unwrap();
    assert!(!scripts.contains("unsafe"), "{policy}");
    assert_eq!(answer.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(upstream.calls.get(), 0);
}

/// `request` with its `Host` header replaced.
fn with_host(
    mut request: http::Request<http_body_util::Full<bytes::Bytes>>,
    host: &str,
) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    request
        .headers_mut()
        .insert(http::header::HOST, host.parse().unwrap());
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoints_refuse_a_host_name_they_were_not_given() {
    let upstream = Upstream::echo().await;
    let gateway = Gateway::start(&[
        "--upstream",
        &upstream.url(),
        "--admin-host",
        "gateway.internal",
    ]);
    let port = gateway.addr().port();
    // A page on a name of its own pointed at the gateway (DNS rebinding)
    // reads none of the endpoints.
    for path in [
        "/_idempotency/",
        "/_idempotency/stats",
        "/_idempotency/metrics",
        "/_idempotency/health",
        "/_idempotency/anything",
    ] {
        for host in [
            format!("evil.example:{port}"),
            format!("127.0.0.1.evil.example:{port}"),
            "evil.example".to_owned(),
        ] {
            let answer = send(with_host(get(&gateway.url(path)), &host)).await;
            assert_eq!(answer.status, 421, "{path} for {host}: {answer:?}");
            assert!(
                !String::from_utf8_lossy(&answer.body).contains("requests"),
                "{path} for {host} leaked the stats"
            );
        }
    }
    // Addresses, localhost and the names given are answered.
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("gateway.internal:{port}"),
        format!("GATEWAY.INTERNAL.:{port}"),
    ] {
        let answer = send(with_host(get(&gateway.url("/_idempotency/stats")), &host)).await;
        assert_eq!(answer.status, 200, "{host}: {answer:?}");
    }
    // The proxy itself forwards whatever the host.
    let answer = send(with_host(
        post_json(&gateway.url("/v1/chat/completions"), r#"{"q":1}"#),
        "evil.example",
    ))
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(upstream.calls.get(), 1);
}

#[test]
fn a_malformed_admin_host_is_refused_at_start() {
    let upstream = "http://127.0.0.1:9";
    for bad in ["", "evil example", "gateway/internal", "a:80"] {
        let (status, stderr) = start_refused(&["--upstream", upstream, "--admin-host", bad]);
        assert!(!status.success());
        assert!(stderr.contains("--admin-host"), "{bad:?}: {stderr}");
    }
}

/// `INFO commandstats`' call count of `command` on `redis`.
async fn calls_of(redis: &RedisServer, command: &str) -> u64 {
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |calls| calls.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_probe_is_one_ping_and_asks_nothing_of_other_gateways() {
    let redis = RedisServer::start();
    let upstream = Upstream::echo().await;
    let args = ["--upstream", &upstream.url(), "--redis", &redis.url()];
    let gateway = Gateway::start(&args);
    let _other = Gateway::start(&args);
    assert_eq!(health(&gateway).await["redis"]["reachable"], true);

    let (pings, publishes) = (
        calls_of(&redis, "ping").await,
        calls_of(&redis, "publish").await,
    );
    for _ in 0..20 {
        let seen = health(&gateway).await;
        assert_eq!(seen["redis"]["reachable"], true, "{seen}");
        assert!(
            seen["redis"]["round_trip_ms"]
                .as_f64()
                .is_some_and(|ms| ms >= 0.0),
            "{seen}"
        );
    }
    assert!(calls_of(&redis, "ping").await >= pings + 20);
    // No flush request on the events channel: the other gateway is not
    // asked for its counts (the stats would).
    assert_eq!(calls_of(&redis, "publish").await, publishes);
}
