//! What is in the key: the authority, the default vary headers, and the
//! `Idempotency-Key` contract against cache directives; `key_for` and
//! `purge`; the bounds of TTLs.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use tower::Layer;
use tower_idempotency::{ErrorKind, IdempotencyLayer, KeyHeader};

use crate::support::*;

fn with(uri: &str, headers: &[(&str, &str)], body: &'static str) -> Request<Full<Bytes>> {
    let mut request = Request::post(uri).header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

#[tokio::test]
async fn virtual_hosts_do_not_share_entries() {
    let (inner, calls) = numbered();
    let service = IdempotencyLayer::new().layer(inner);
    let a = fetch(&service, with("/v1/chat", &[("host", "a.example")], "{}")).await;
    let b = fetch(&service, with("/v1/chat", &[("host", "b.example")], "{}")).await;
    assert_ne!(a.body, b.body, "each virtual host gets its own answer");
    assert_eq!(calls.get(), 2);
    // Host names are case-insensitive.
    let again = fetch(&service, with("/v1/chat", &[("host", "A.Example")], "{}")).await;
    assert_eq!(again.body, a.body);
    assert_eq!(calls.get(), 2);
}

#[tokio::test]
async fn origin_form_with_host_keys_like_the_absolute_uri() {
    // The same request as an HTTP/1.1 server sees it (origin-form and
    // `Host`), as an HTTP/2 server or a client sees it (absolute URI, any
    // scheme): one entry. A `Host` naming another authority than the
    // absolute URI does not matter: the URI's authority wins.
    let (inner, calls) = numbered();
    let service = IdempotencyLayer::new().layer(inner);
    let origin = fetch(&service, with("/v1/chat", &[("host", "api.example")], "{}")).await;
    for uri in ["http://api.example/v1/chat", "https://api.example/v1/chat"] {
        let absolute = fetch(&service, with(uri, &[("host", "other.example")], "{}")).await;
        assert_eq!(absolute.body, origin.body, "{uri}");
    }
    assert_eq!(calls.get(), 1);
    // Without any authority, a request is another entry still.
    fetch(&service, with("/v1/chat", &[], "{}")).await;
    fetch(&service, with("http://api.example:8080/v1/chat", &[], "{}")).await;
    assert_eq!(calls.get(), 3);
}

#[tokio::test]
async fn idempotency_keys_are_scoped_by_virtual_host() {
    let (inner, calls) = numbered();
    let service = IdempotencyLayer::builder()
        .idempotency_key_header(KeyHeader::Required)
        .build()
        .layer(inner);
    let a = fetch(
        &service,
        with(
            "/pay",
            &[("host", "a.example"), ("idempotency-key", "k-1")],
            "{}",
        ),
    )
    .await;
    let b = fetch(
        &service,
        with(
            "/pay",
            &[("host", "b.example"), ("idempotency-key", "k-1")],
            "{}",
        ),
    )
    .await;
    assert_eq!((a.status, b.status), (200, 200));
    assert_ne!(a.body, b.body);
    assert_eq!(calls.get(), 2);
}

#[tokio::test]
async fn tenants_differing_only_in_a_provider_header_get_separate_entries() {
    for name in [
        "api-key",
        "x-goog-api-key",
        "x-goog-user-project",
        "anthropic-version",
        "anthropic-beta",
        "openai-organization",
        "openai-project",
        "openai-beta",
        "x-api-key",
        "authorization",
    ] {
        let (inner, calls) = numbered();
        let service = IdempotencyLayer::new().layer(inner);
        let a = fetch(&service, with("/v1/chat", &[(name, "tenant-a")], "{}")).await;
        let b = fetch(&service, with("/v1/chat", &[(name, "tenant-b")], "{}")).await;
        assert_ne!(a.body, b.body, "{name}");
        assert_eq!(calls.get(), 2, "{name}");
        let again = fetch(&service, with("/v1/chat", &[(name, "tenant-a")], "{}")).await;
        assert_eq!(again.body, a.body, "{name}");
    }
}

#[tokio::test]
async fn cache_directives_do_not_switch_off_the_idempotency_key_contract() {
    let (inner, calls) = numbered();
    let service = IdempotencyLayer::builder()
        .idempotency_key_header(KeyHeader::Required)
        .build()
        .layer(inner);
    let first = fetch(
        &service,
        with("/pay", &[("idempotency-key", "k-1")], r#"{"a":1}"#),
    )
    .await;
    assert_eq!(first.status, 200);
    for directive in ["no-cache", "no-store", "no-cache, no-store"] {
        assert_eq!(
            rejection(
                &service,
                with(
                    "/pay",
                    &[("idempotency-key", "k-1"), ("cache-control", directive)],
                    r#"{"a":2}"#
                )
            )
            .await,
            (422, Some(ErrorKind::KeyReused)),
            "{directive}"
        );
        assert_eq!(
            rejection(
                &service,
                with("/pay", &[("cache-control", directive)], "{}")
            )
            .await,
            (400, Some(ErrorKind::MissingKey)),
            "{directive}"
        );
        // The same key and payload is the same operation: replayed.
        let again = fetch(
            &service,
            with(
                "/pay",
                &[("idempotency-key", "k-1"), ("cache-control", directive)],
                r#"{"a":1}"#,
            ),
        )
        .await;
        assert_eq!(again.body, first.body, "{directive}");
    }
    assert_eq!(calls.get(), 1);
}

#[tokio::test]
async fn an_optional_idempotency_key_wins_over_cache_directives_too() {
    let (inner, calls) = numbered();
    let service = IdempotencyLayer::builder()
        .idempotency_key_header(KeyHeader::Optional)
        .build()
        .layer(inner);
    fetch(
        &service,
        with("/pay", &[("idempotency-key", "k-1")], r#"{"a":1}"#),
    )
    .await;
    assert_eq!(
        rejection(
            &service,
            with(
                "/pay",
                &[("idempotency-key", "k-1"), ("cache-control", "no-store")],
                r#"{"a":2}"#
            )
        )
        .await,
        (422, Some(ErrorKind::KeyReused))
    );
    // Without a key, the directives keep their meaning.
    fetch(&service, with("/pay", &[], "{}")).await;
    fetch(
        &service,
        with("/pay", &[("cache-control", "no-cache")], "{}"),
    )
    .await;
    assert_eq!(calls.get(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_keyed_requests_with_no_store_are_coalesced() {
    let (inner, calls, gate) = gated(|_| respond(200, "paid once"));
    let layer = IdempotencyLayer::builder()
        .idempotency_key_header(KeyHeader::Required)
        .build();
    let service = layer.clone().layer(inner);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let service = service.clone();
            tokio::spawn(async move {
                fetch(
                    &service,
                    with(
                        "/pay",
                        &[("idempotency-key", "k-9"), ("cache-control", "no-store")],
                        "{}",
                    ),
                )
                .await
            })
        })
        .collect();
    assert!(eventually(Duration::from_secs(5), || calls.get() == 1).await);
    until("every request reached the layer", || {
        layer.stats().requests == 8
    })
    .await;
    // From there to the flight is a few microseconds of work nothing
    // outside the crate can see (no clock to pause on this multi-threaded
    // runtime): a margin, not an ordering.
    tokio::time::sleep(Duration::from_millis(20)).await;
    gate.notify_one();
    for task in tasks {
        let answer = task.await.unwrap();
        assert_eq!((answer.status, &answer.body[..]), (200, &b"paid once"[..]));
    }
    assert_eq!(calls.get(), 1);
}

#[tokio::test]
async fn key_for_names_the_idempotency_key_entry_so_purge_forgets_it() {
    let (inner, calls) = numbered();
    let layer = IdempotencyLayer::builder()
        .idempotency_key_header(KeyHeader::Required)
        .build();
    let service = layer.clone().layer(inner);
    let request = || with("/pay", &[("idempotency-key", "k-1")], r#"{"a":1}"#);
    let first = fetch(&service, request()).await;
    let (head, _) = request().into_parts();
    let key = layer.key_for(&head, br#"{"a":1}"#).expect("a key");
    let response = {
        use tower::ServiceExt;
        service.clone().oneshot(request()).await.unwrap()
    };
    assert_eq!(
        response.extensions().get::<tower_idempotency::Key>(),
        Some(&key),
        "key_for gives the key the response was stored under"
    );
    assert_eq!(calls.get(), 1);
    layer.purge(&key).await;
    let after = fetch(&service, request()).await;
    assert_ne!(after.body, first.body, "purged: upstream is called again");
    assert_eq!(calls.get(), 2);
    // Without the header, where it is required, there is no entry to name.
    let (head, _) = with("/pay", &[], "{}").into_parts();
    assert_eq!(layer.key_for(&head, b"{}"), None);
}

fn controlled(ttl: &str) -> Request<Full<Bytes>> {
    with("/v1/chat", &[("x-idempotency-ttl", ttl)], "{}")
}

#[tokio::test]
async fn control_ttls_above_the_maximum_or_garbage_are_400() {
    let (inner, calls) = numbered();
    let service = IdempotencyLayer::builder()
        .control_headers(true)
        .max_ttl(Duration::from_secs(3600))
        .build()
        .layer(inner);
    for bad in ["18446744073709551615", "3601", "-1", "1.5", "soon", ""] {
        assert_eq!(
            rejection(&service, controlled(bad)).await,
            (400, Some(ErrorKind::InvalidControl)),
            "{bad:?}"
        );
    }
    assert_eq!(calls.get(), 0);
    assert_eq!(fetch(&service, controlled("3600")).await.status, 200);
    assert_eq!(fetch(&service, controlled("3600")).await.status, 200);
    assert_eq!(calls.get(), 1, "the maximum itself is kept");
    // Zero: answered, kept nowhere.
    let zero = || with("/v1/other", &[("x-idempotency-ttl", "0")], "{}");
    fetch(&service, zero()).await;
    fetch(&service, zero()).await;
    assert_eq!(calls.get(), 3);
}

#[tokio::test]
async fn the_default_maximum_ttl_refuses_the_largest_number() {
    let (inner, _calls) = numbered();
    let service = IdempotencyLayer::builder()
        .control_headers(true)
        .build()
        .layer(inner);
    assert_eq!(
        rejection(&service, controlled("18446744073709551615")).await,
        (400, Some(ErrorKind::InvalidControl))
    );
    let thirty_days = (30 * 24 * 3600).to_string();
    assert_eq!(fetch(&service, controlled(&thirty_days)).await.status, 200);
}

#[tokio::test]
async fn a_builder_ttl_of_any_size_expires() {
    let (inner, calls) = numbered();
    let service = IdempotencyLayer::builder()
        .ttl(Duration::MAX)
        .wait_timeout(Duration::MAX)
        .build()
        .layer(inner);
    fetch(&service, with("/v1/chat", &[], "{}")).await;
    let hit = fetch(&service, with("/v1/chat", &[], "{}")).await;
    assert_eq!(calls.get(), 1);
    let ttl: u64 = hit
        .cache_status()
        .rsplit("ttl=")
        .next()
        .and_then(|t| t.parse().ok())
        .expect("a ttl in the cache status");
    assert!(ttl <= 30 * 24 * 3600, "clamped to the maximum TTL: {ttl}");
    // Zero keeps nothing.
    let (inner, calls) = numbered();
    let service = IdempotencyLayer::builder()
        .ttl(Duration::ZERO)
        .build()
        .layer(inner);
    fetch(&service, with("/v1/chat", &[], "{}")).await;
    fetch(&service, with("/v1/chat", &[], "{}")).await;
    assert_eq!(calls.get(), 2);
}

#[tokio::test]
async fn the_authority_can_be_left_out_of_the_key() {
    // A reverse proxy to one upstream, reached at several addresses.
    let (inner, calls) = numbered();
    let service = IdempotencyLayer::builder()
        .key_authority(false)
        .build()
        .layer(inner);
    let a = fetch(
        &service,
        with("/v1/chat", &[("host", "10.0.0.1:8080")], "{}"),
    )
    .await;
    let b = fetch(
        &service,
        with("/v1/chat", &[("host", "10.0.0.2:8080")], "{}"),
    )
    .await;
    assert_eq!(a.body, b.body);
    assert_eq!(calls.get(), 1);
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn a_wait_timeout_of_any_size_never_overflows_a_deadline() {
    // With a shared store, every miss computes a deadline from the wait
    // timeout: the largest one must not overflow the clock.
    let redis = crate::support::redis_server::RedisServer::start();
    let store = tower_idempotency::RedisStore::builder(redis.url())
        .connect()
        .await
        .expect("connect to the test redis");
    let (inner, calls) = numbered();
    let service = IdempotencyLayer::builder()
        .redis(store)
        .wait_timeout(Duration::MAX)
        .ttl(Duration::MAX)
        .build()
        .layer(inner);
    let first = fetch(&service, with("/v1/chat", &[], "{}")).await;
    assert_eq!(first.status, 200);
    let again = fetch(&service, with("/v1/chat", &[], "{}")).await;
    assert_eq!(again.body, first.body);
    assert_eq!(calls.get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_keyed_retries_with_cache_directives_make_one_call_per_key_in_every_round() {
    let (inner, calls) = numbered();
    let service = IdempotencyLayer::builder()
        .idempotency_key_header(KeyHeader::Required)
        .build()
        .layer(inner);
    const ROUNDS: usize = 300;
    for round in 0..ROUNDS {
        let key: &'static str = Box::leak(format!("round-{round}").into_boxed_str());
        let tasks: Vec<_> = [
            "no-store",
            "no-cache",
            "no-store",
            "",
            "no-cache, no-store",
            "",
        ]
        .into_iter()
        .map(|directive| {
            let service = service.clone();
            tokio::spawn(async move {
                let mut headers = vec![("idempotency-key", key)];
                if !directive.is_empty() {
                    headers.push(("cache-control", directive));
                }
                fetch(&service, with("/pay", &headers, "{}")).await
            })
        })
        .collect();
        let mut bodies = Vec::new();
        for task in tasks {
            let answer = task.await.unwrap();
            assert_eq!(answer.status, 200, "round {round}");
            bodies.push(answer.body);
        }
        assert!(bodies.iter().all(|b| b == &bodies[0]), "round {round}");
        assert_eq!(calls.get(), round + 1, "one call for round {round}");
    }
}

/// A byte-identical repeat finds its key by the raw body's digest; the same
/// raw body on another path, for another tenant, in another namespace or
/// with another query is still another entry, and a repeat that differs
/// only in JSON layout is still the same one.
#[tokio::test]
async fn the_same_raw_body_elsewhere_is_not_a_hit() {
    let (inner, calls) = numbered();
    let service = IdempotencyLayer::builder()
        .control_headers(true)
        .build()
        .layer(inner);
    let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
    let first = fetch(&service, with("/v1/chat", &[], body)).await;
    let again = fetch(&service, with("/v1/chat", &[], body)).await;
    assert_eq!(again.body, first.body);
    assert_eq!(calls.get(), 1);
    let elsewhere: [(&str, &[(&str, &str)]); 5] = [
        ("/v1/other", &[]),
        ("/v1/chat?stream=1", &[]),
        ("/v1/chat", &[("authorization", "Bearer tenant-b")]),
        ("/v1/chat", &[("x-idempotency-namespace", "v2")]),
        ("/v1/chat", &[("host", "b.example")]),
    ];
    for (n, (uri, headers)) in elsewhere.into_iter().enumerate() {
        let other = fetch(&service, with(uri, headers, body)).await;
        assert_ne!(other.body, first.body, "case {n}: {uri} {headers:?}");
        assert_eq!(calls.get(), 2 + n, "case {n}");
        // Its own repeat is its own hit.
        let repeat = fetch(&service, with(uri, headers, body)).await;
        assert_eq!(repeat.body, other.body, "case {n}");
    }
    let reordered = r#"{ "messages": [{"content":"hi","role":"user"}], "model": "m" }"#;
    let same = fetch(&service, with("/v1/chat", &[], reordered)).await;
    assert_eq!(same.body, first.body);
    assert_eq!(calls.get(), 6);
}
