//! The flags: bad values are refused at start-up with a clear message, and
//! each good one does what it says.

use std::sync::{Arc, Mutex};

use axum::{extract::Request, response::IntoResponse, Router};
use bytes::Bytes;
use http::Request as HttpRequest;
use http_body_util::Full;
use serde_json::{json, Value};

use crate::{
    harness::{client, get, post_json, send, start_refused, until, Gateway},
    support::{Answer, Calls},
    upstream::Upstream,
};

#[test]
fn bad_flag_values_are_refused_at_start_up() {
    let cases: &[(&str, &str)] = &[
        ("--ttl", "0"),
        ("--ttl", "an hour"),
        ("--ttl", "99999999999999999999"),
        ("--ttl", "31536001"),
        ("--header-timeout", "0"),
        ("--header-timeout", "-1"),
        ("--header-timeout", "NaN"),
        ("--header-timeout", "inf"),
        ("--header-timeout", "1e300"),
        ("--body-timeout", "slow"),
        ("--keepalive-timeout", "0"),
        ("--upstream-timeout", "0"),
        ("--idle-timeout", "100000"),
        ("--wait-timeout", "-5"),
        ("--max-connections", "0"),
        ("--max-connections", "99999999999"),
        ("--max-connections", "many"),
        ("--l1-capacity", "0"),
        ("--l1-capacity", "5T"),
        ("--l1-capacity", "99999999999G"),
        ("--max-body", "0"),
        ("--max-body", "2G"),
        ("--vary-header", "not a header"),
        ("--price", "gpt-4o=1"),
        ("--price", "gpt-4o=cheap,dear"),
        ("--price", "=1,2"),
        ("--price", "gpt-4o=1,2,3,4"),
        ("--price", "gpt-4o=-1,2"),
        ("--price-per-call", "-0.5"),
        ("--price-per-call", "NaN"),
        ("--price-per-call", "1e12"),
        ("--upstream", "ftp://example.com"),
    ];
    for (flag, value) in cases {
        let mut args = vec!["--upstream", "http://127.0.0.1:9"];
        if *flag == "--upstream" {
            args.clear();
        }
        args.extend([*flag, *value]);
        let (status, stderr) = start_refused(&args);
        assert_eq!(status.code(), Some(2), "{flag} {value}: {stderr}");
        assert!(
            stderr.contains(flag) && stderr.contains("invalid value"),
            "{flag} {value}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{flag} {value}: {stderr}");
    }
}

#[test]
fn the_help_states_every_default() {
    let (status, help) = start_refused(&["--help"]);
    assert_eq!(status.code(), Some(0));
    for default in [
        "[default: 30]",
        "[default: 60]",
        "[default: 600]",
        "[default: 300]",
        "[default: 10000]",
        "[default: 64M]",
        "[default: 16M]",
        "[default: 3600]",
    ] {
        assert!(help.contains(default), "{default} missing from:\n{help}");
    }
}

/// An OpenAI-style chat completion with 1,000 input and 500 output tokens.
async fn chat_upstream() -> Upstream {
    let calls = Calls::default();
    let counter = calls.clone();
    let router = Router::new().fallback(move |_: Request| {
        let call = counter.inc();
        async move {
            (
                [("content-type", "application/json")],
                json!({
                    "id": format!("chatcmpl-{call}"),
                    "object": "chat.completion",
                    "model": "gpt-4o-mini-2024-07-18",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500}
                })
                .to_string(),
            )
                .into_response()
        }
    });
    Upstream::serve(router, calls).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn money_saved_for_a_priced_model_appears_in_the_stats_after_a_repeat() {
    let upstream = chat_upstream().await;
    let gateway = Gateway::start(&[
        "--upstream",
        &upstream.url(),
        "--price",
        "gpt-4o-mini=1,2",
        "--price",
        "gpt-4o=2.5,10,1.25",
    ]);
    let prompt = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
    send(post_json(&gateway.url("/v1/chat/completions"), prompt)).await;
    assert!(
        until(std::time::Duration::from_secs(5), || async {
            gateway.stats().await["process"]["stored"] == 1
        })
        .await
    );
    let repeat = send(post_json(&gateway.url("/v1/chat/completions"), prompt)).await;
    assert!(repeat.cache_status().contains("; hit"), "{repeat:?}");
    let stats = gateway.stats().await;
    // 1,000 × $1/M + 500 × $2/M = $0.002.
    assert_eq!(
        stats["process"]["money_saved"]["micro_dollars"], 2000,
        "{stats}"
    );
    assert_eq!(stats["process"]["tokens_saved"], 1500);
    assert_eq!(upstream.calls.get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_price_per_call_prices_calls_without_a_model() {
    let upstream = Upstream::echo().await;
    let gateway = Gateway::start(&["--upstream", &upstream.url(), "--price-per-call", "0.25"]);
    for _ in 0..3 {
        send(get(&gateway.url("/v1/images/describe?id=7"))).await;
    }
    let stats = gateway.stats().await;
    assert_eq!(
        stats["process"]["money_saved"]["micro_dollars"], 500_000,
        "two repeats at $0.25: {stats}"
    );
    assert_eq!(upstream.calls.get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vary_header_adds_a_header_to_the_key_and_keeps_the_defaults() {
    let upstream = Upstream::echo().await;
    let gateway = Gateway::start(&["--upstream", &upstream.url(), "--vary-header", "X-Tenant"]);
    let ask = |tenant: &str, key: &str| {
        HttpRequest::get(gateway.url("/v1/models"))
            .header("x-tenant", tenant)
            .header("authorization", key)
            .body(Full::<Bytes>::default())
            .unwrap()
    };
    let call = |answer: &Answer| -> u64 {
        serde_json::from_slice::<Value>(&answer.body).unwrap()["call"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(call(&send(ask("a", "Bearer 1")).await), 1);
    assert_eq!(
        call(&send(ask("b", "Bearer 1")).await),
        2,
        "x-tenant is keyed"
    );
    assert_eq!(
        call(&send(ask("a", "Bearer 2")).await),
        3,
        "so is authorization"
    );
    assert_eq!(call(&send(ask("a", "Bearer 1")).await), 1, "a repeat");
    assert_eq!(upstream.calls.get(), 3);
}

/// A small `--l1-capacity`: one entry replayed a few times, then ten times
/// the capacity of one-off misses; the entry is still replayed from memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_entry_survives_a_flood_of_one_off_misses() {
    const BODY: usize = 8 * 1024;
    let paths: Arc<Mutex<Vec<String>>> = Arc::default();
    let calls = Calls::default();
    let router = Router::new().fallback({
        let paths = Arc::clone(&paths);
        let calls = calls.clone();
        move |request: Request| {
            calls.inc();
            paths.lock().unwrap().push(request.uri().path().to_owned());
            async move { vec![b'x'; BODY] }
        }
    });
    let upstream = Upstream::serve(router, calls).await;
    let gateway = Gateway::start(&["--upstream", &upstream.url(), "--l1-capacity", "1M"]);
    for _ in 0..3 {
        let hot = send(get(&gateway.url("/hot"))).await;
        assert_eq!(hot.body.len(), BODY);
    }
    // 1 MiB holds about 120 such entries.
    let client = client();
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let client = client.clone();
        let base = gateway.url("/one-off");
        tasks.push(tokio::spawn(async move {
            for i in 0..150 {
                let request = get(&format!("{base}/{worker}/{i}"));
                let response = client.request(request).await.expect("answered");
                Answer::read(response).await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let hot = send(get(&gateway.url("/hot"))).await;
    assert!(
        hot.cache_status().contains("; hit"),
        "evicted: {}",
        hot.cache_status()
    );
    let hot_calls = paths
        .lock()
        .unwrap()
        .iter()
        .filter(|p| *p == "/hot")
        .count();
    assert_eq!(hot_calls, 1);
    let stats = gateway.stats().await;
    assert_eq!(stats["process"]["hits"]["l1"], 3, "{stats}");
    // What L1 holds is reported, within the budget.
    let weighed = stats["l1"]["weighed_bytes"].as_u64().unwrap();
    assert!(weighed > 0 && weighed <= 1024 * 1024, "{stats}");
    assert!(stats["l1"]["entries"].as_u64().unwrap() > 50, "{stats}");
}

/// `--config FILE`: settings named like the flags; the command line wins
/// for single values and adds to lists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_file_mirrors_the_flags_and_the_command_line_overrides_it() {
    let upstream = Upstream::echo().await;
    let path = std::env::temp_dir().join(format!(
        "gateway-config-{}-{}.toml",
        std::process::id(),
        upstream.addr.port()
    ));
    std::fs::write(
        &path,
        format!(
            "upstream = \"{}\"\nttl = 1\ncontrol-headers = true\nvary-header = [\"x-tenant\"]\n",
            upstream.url()
        ),
    )
    .unwrap();
    let config = path.to_str().unwrap();
    let gateway = Gateway::start(&[
        "--config",
        config,
        "--ttl",
        "3600",
        "--vary-header",
        "x-team",
        "--vary-header",
        "x-org",
    ]);
    let ask = |headers: &[(&str, &str)]| {
        let mut request = HttpRequest::get(gateway.url("/v1/models"));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(Full::<Bytes>::default()).unwrap()
    };
    let call = |answer: &Answer| -> u64 {
        serde_json::from_slice::<Value>(&answer.body).unwrap()["call"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(call(&send(ask(&[])).await), 1);
    assert_eq!(
        call(&send(ask(&[("x-tenant", "a")])).await),
        2,
        "the file's vary header"
    );
    assert_eq!(
        call(&send(ask(&[("x-team", "a")])).await),
        3,
        "the command line's"
    );
    assert_eq!(call(&send(ask(&[("x-org", "a")])).await), 4, "both of them");
    let bypass = send(ask(&[("x-idempotency-bypass", "true")])).await;
    assert_eq!(
        bypass.cache_status(),
        "tower-idempotency; fwd=bypass",
        "the file's switch"
    );
    // The file says one second, the command line an hour.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let later = send(ask(&[])).await;
    assert!(later.cache_status().contains("; hit"), "{later:?}");
    assert_eq!(call(&later), 1);

    for (settings, expected) in [
        ("ttl = \"soon\"\n", "--ttl"),
        ("nope = 1\n", "`nope` is not a setting"),
        ("ttl = [\n", "TOML parse error"),
        ("control-headers = \"yes\"\n", "true or false"),
    ] {
        std::fs::write(&path, settings).unwrap();
        let (status, stderr) = start_refused(&["--config", config, "--upstream", &upstream.url()]);
        assert_eq!(status.code(), Some(2), "{settings}: {stderr}");
        assert!(stderr.contains(config), "{settings}: {stderr}");
        assert!(stderr.contains(expected), "{settings}: {stderr}");
    }
    let _ = std::fs::remove_file(&path);
}
