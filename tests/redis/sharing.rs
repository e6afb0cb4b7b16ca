//! Several instances sharing one Redis: one upstream call, one stored entry,
//! purges seen everywhere.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::{sync::Notify, time::timeout};
use tower::Layer;
use tower_idempotency::IdempotencyLayer;

use crate::{entry_name, instance, key_of, l1_emptied, store, support::*};
use redis_server::RedisServer;

const PATIENCE: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_with_fifty_duplicates_each_make_one_call() {
    let server = RedisServer::start();
    let gate = Arc::new(Notify::new());
    let answered_at = Arc::new(Mutex::new(None));
    let (inner, calls) = upstream({
        let gate = Arc::clone(&gate);
        let answered_at = Arc::clone(&answered_at);
        move |seen: Seen| {
            let gate = Arc::clone(&gate);
            let answered_at = Arc::clone(&answered_at);
            async move {
                gate.notified().await;
                *answered_at.lock().unwrap() = Some(Instant::now());
                respond(
                    200,
                    format!("{{\"call\":{},\"len\":{}}}", seen.call, seen.body.len()),
                )
            }
        }
    });
    let a = instance(store(&server.url())).await;
    let b = instance(store(&server.url())).await;
    let (service_a, service_b) = (a.layer(inner.clone()), b.layer(inner));

    let mut tasks = Vec::new();
    for _ in 0..50 {
        for service in [service_a.clone(), service_b.clone()] {
            tasks.push(tokio::spawn(async move {
                fetch(&service, post("/v1/chat", "same prompt")).await
            }));
        }
    }
    // Every request has reached its layer; one instance leads, the other waits on Redis.
    until("every request reached its layer", || {
        a.stats().requests == 50 && b.stats().requests == 50
    })
    .await;
    // The other instance's wait on Redis (a look-up that finds the lease)
    // has no signal outside the crate: a margin for that round trip.
    tokio::time::sleep(Duration::from_millis(100)).await;
    gate.notify_one();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(timeout(PATIENCE, task).await.unwrap().unwrap());
    }
    let done_at = Instant::now();

    assert_eq!(calls.get(), 1, "one upstream call across both instances");
    assert!(answers
        .iter()
        .all(|answer| answer.status == 200 && answer.body == answers[0].body));
    // The waiters elsewhere were woken by a notification: the fallback poll is
    // 5 s and the lease 10 s, so anything near them means no notification.
    let waited = done_at - answered_at.lock().unwrap().unwrap();
    assert!(
        waited < Duration::from_millis(250),
        "the last waiter finished {waited:?} after the upstream answered"
    );

    let (sa, sb) = (a.stats(), b.stats());
    assert_eq!(sa.upstream_calls + sb.upstream_calls, 1);
    assert_eq!(
        sa.hits.l2 + sb.hits.l2,
        1,
        "the waiting instance's leader read the entry from redis"
    );
    assert_eq!(sa.coalesced + sb.coalesced, 98);
}

#[tokio::test]
async fn a_new_instance_is_served_from_redis_in_one_round_trip() {
    let server = RedisServer::start();
    let (inner, calls) = numbered();
    // No background flush during the measurement.
    let quiet = |url: &str| store(url).flush_interval(Duration::from_secs(3600));
    let a = instance(quiet(&server.url())).await.layer(inner.clone());
    // Load the scripts once, so the counts below are steady-state.
    fetch(&a, post("/warm", "up")).await;
    // The store-and-release runs after the caller has its last byte: let it land.
    let settle = || tokio::time::sleep(Duration::from_millis(200));
    settle().await;

    server.cli(&["CONFIG", "RESETSTAT"]);
    let first = fetch(&a, post("/v1/describe", "photo bytes")).await;
    settle().await;
    let miss = command_calls(&server);
    assert_eq!(
        miss.get("evalsha"),
        Some(&2),
        "a miss is look-up-or-claim, then store-and-release: {miss:?}"
    );
    assert!(
        !miss.contains_key("eval") && !miss.contains_key("script"),
        "{miss:?}"
    );

    let b = instance(quiet(&server.url())).await.layer(inner);
    server.cli(&["CONFIG", "RESETSTAT"]);
    let replay = fetch(&b, post("/v1/describe", "photo bytes")).await;
    settle().await;
    let hit = command_calls(&server);
    assert_eq!(
        (hit.get("hget"), hit.get("evalsha")),
        (Some(&1), None),
        "an L2 hit is one round trip, a plain read: {hit:?}"
    );
    assert_eq!(
        calls.get(),
        2,
        "the warm-up and the first call; the new instance made none"
    );
    assert_eq!(replay.body, first.body);
    assert!(replay
        .cache_status()
        .starts_with("tower-idempotency; hit; ttl="));
    assert_eq!(replay.header("age"), Some("0"));
}

#[tokio::test]
async fn entry_analytics_count_hits_from_every_tier() {
    let server = RedisServer::start();
    let (inner, _) = numbered();
    let fast = |url: &str| store(url).flush_interval(Duration::from_millis(50));
    let a = instance(fast(&server.url())).await;
    let b = instance(fast(&server.url())).await;
    let request = post("/", "q");
    let key = key_of(&a, &request).await;
    fetch(&a.layer(inner.clone()), request.clone()).await; // miss: stored
    fetch(&b.layer(inner.clone()), request.clone()).await; // L2 hit
    fetch(&b.layer(inner.clone()), request.clone()).await; // L1 hit
    fetch(&a.layer(inner), request).await; // L1 hit

    let redis = RedisStoreHandle::new(&server).await;
    let stats = redis.entry(&key).await;
    assert_eq!(stats.hits, 3);
    assert!(stats.last_hit_at.is_some() && stats.created_at > 0);

    // The seed's ROI query: the entries replayed most, fleet-wide.
    fetch(&a.layer(numbered().0), post("/", "rarely asked")).await;
    let top = a.top_entries(10).await.unwrap().unwrap();
    assert_eq!(top.len(), 2);
    assert_eq!((top[0].key, top[0].stats.hits), (key, 3));
    assert_eq!(top[1].stats.hits, 0);

    let fleet = a.fleet_stats().await.unwrap().unwrap();
    let totals = (
        fleet.misses,
        fleet.hits_l2,
        fleet.hits_l1,
        fleet.upstream_calls,
        fleet.stored,
    );
    assert_eq!(
        totals,
        (2, 1, 2, 2, 2),
        "two misses, one L2 hit, two L1 hits, fleet-wide"
    );
}

/// A store handle for reading analytics, as an operator would.
struct RedisStoreHandle(tower_idempotency::RedisStore);

impl RedisStoreHandle {
    async fn new(server: &RedisServer) -> Self {
        Self(
            tower_idempotency::RedisStore::connect(&server.url())
                .await
                .unwrap(),
        )
    }

    async fn entry(&self, key: &tower_idempotency::Key) -> tower_idempotency::EntryStats {
        // Counters flush every 50 ms in this test.
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.0
            .entry_stats("", key)
            .await
            .unwrap()
            .expect("the entry is stored")
    }
}

#[tokio::test]
async fn garbage_under_our_keys_is_a_miss() {
    let server = RedisServer::start();
    let (inner, calls) = numbered();
    let layer = instance(store(&server.url())).await;
    let service = layer.layer(inner);
    let mut redis = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let random: Vec<u8> = (0..512u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut truncated = b"TIR\0\x01".to_vec();
    truncated.extend_from_slice(&random[..40]);
    let cases: [(&str, &str, Vec<Vec<u8>>); 5] = [
        (
            "random bytes as a string",
            "",
            vec![b"SET".to_vec(), vec![], random.clone()],
        ),
        (
            "a hash of random bytes",
            "",
            vec![b"HSET".to_vec(), vec![], b"r".to_vec(), random.clone()],
        ),
        (
            "a truncated record",
            "",
            vec![b"HSET".to_vec(), vec![], b"r".to_vec(), truncated],
        ),
        ("a list", "", vec![b"RPUSH".to_vec(), vec![], b"x".to_vec()]),
        (
            "a lease with no expiry",
            ":lease",
            vec![b"SET".to_vec(), vec![], b"nobody".to_vec()],
        ),
    ];
    for (i, (what, suffix, mut command)) in cases.into_iter().enumerate() {
        let body: &'static str = Box::leak(format!("prompt {i}").into_boxed_str());
        let request = post("/", body);
        command[1] = format!(
            "{}{suffix}",
            entry_name("", &key_of(&layer, &request).await)
        )
        .into_bytes();
        let mut cmd = redis::cmd(std::str::from_utf8(&command[0]).unwrap());
        command[1..].iter().for_each(|arg| {
            cmd.arg(arg.as_slice());
        });
        let _: redis::Value = cmd.query_async(&mut redis).await.unwrap();

        let before = calls.get();
        let answer = timeout(PATIENCE, fetch(&service, request.clone()))
            .await
            .unwrap();
        assert_eq!(answer.status, 200, "{what}");
        assert_eq!(
            answer.body,
            format!("answer #{}", before + 1),
            "{what}: the upstream answered"
        );
        // The garbage was overwritten by the fresh entry: a new instance reads it.
        let fresh = instance(store(&server.url())).await;
        let again = fetch(&fresh.layer(numbered().0), request).await;
        assert_eq!(again.body, answer.body, "{what}");
    }
    assert_eq!(calls.get(), 5);
    assert!(
        layer.stats().store.unreadable >= 2,
        "undecodable records were counted"
    );
}

#[tokio::test]
async fn purges_reach_every_instance() {
    let server = RedisServer::start();
    let (inner, calls) = numbered();
    let a = instance(store(&server.url())).await;
    let b = instance(store(&server.url())).await;
    let (service_a, service_b) = (a.layer(inner.clone()), b.layer(inner));
    let request = post("/", "q");
    fetch(&service_a, request.clone()).await;
    fetch(&service_b, request.clone()).await; // now in b's L1 as well
    assert_eq!(calls.get(), 1);

    a.purge(&key_of(&a, &request).await).await;
    // b's L1 is evicted by the message; then b misses in L1 and L2.
    assert!(l1_emptied(&b).await);
    let after = fetch(&service_b, request.clone()).await;
    assert_eq!(&after.body[..], b"answer #2");

    fetch(&service_a, post("/", "other")).await;
    fetch(&service_b, post("/", "other")).await;
    let calls_before = calls.get();
    a.purge_namespace("").await;
    assert!(l1_emptied(&b).await);
    fetch(&service_b, post("/", "other")).await;
    fetch(&service_b, request).await;
    assert_eq!(
        calls.get(),
        calls_before + 2,
        "both entries were purged everywhere"
    );
}

#[tokio::test]
async fn a_crashed_leaders_lease_is_taken_over_when_it_expires() {
    let server = RedisServer::start();
    let (inner, calls) = numbered();
    let layer = instance(store(&server.url())).await;
    let request = post("/", "q");
    // What a process that crashed mid-call leaves behind: its lease, which
    // nobody renews or releases.
    let lease = format!("{}:lease", entry_name("", &key_of(&layer, &request).await));
    server.cli(&["SET", &lease, "crashed-instance-7", "PX", "700"]);

    let started = Instant::now();
    let answer = timeout(PATIENCE, fetch(&layer.layer(inner), request))
        .await
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(&answer.body[..], b"answer #1");
    assert_eq!(calls.get(), 1);
    assert!(
        waited >= Duration::from_millis(600),
        "it waited for the lease: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(3),
        "and took over as soon as it expired: {waited:?}"
    );
}

#[tokio::test]
async fn past_the_wait_deadline_requests_go_through_or_get_409_in_strict_mode() {
    let server = RedisServer::start();
    let (inner, calls) = numbered();
    let lenient = IdempotencyLayer::builder()
        .redis(store(&server.url()).connect().await.unwrap())
        .wait_timeout(Duration::from_millis(300))
        .build();
    let strict = IdempotencyLayer::builder()
        .redis(store(&server.url()).connect().await.unwrap())
        .wait_timeout(Duration::from_millis(300))
        .strict(true)
        .build();
    let request = post("/", "slow");
    let lease = format!(
        "{}:lease",
        entry_name("", &key_of(&lenient, &request).await)
    );
    server.cli(&["SET", &lease, "busy-elsewhere", "PX", "30000"]);

    let rejected = Answer::read(
        tower::ServiceExt::oneshot(strict.layer(inner.clone()), request.clone())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(rejected.status, 409);
    assert_eq!(calls.get(), 0);

    let started = Instant::now();
    let through = fetch(&lenient.layer(inner), request).await;
    assert_eq!(
        (through.status, &through.body[..]),
        (200, &b"answer #1"[..])
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(lenient.stats().wait_timeouts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_layers_release_their_l1() {
    let server = RedisServer::start();
    let redis = store(&server.url()).connect().await.unwrap();
    let (inner, _) = numbered();
    let live = IdempotencyLayer::builder().redis(redis.clone()).build();
    for i in 0..100 {
        // Hot reloads, per-tenant layers: each gets its L1, then goes away.
        let layer = IdempotencyLayer::builder().redis(redis.clone()).build();
        let body: &'static str = Box::leak(format!("prompt {i}").into_boxed_str());
        fetch(&layer.layer(inner.clone()), post("/", body)).await;
    }
    assert!(
        eventually(Duration::from_secs(2), || redis.l1_subscribers() == 1).await,
        "{} L1 caches are still held for 1 live layer",
        redis.l1_subscribers()
    );

    // The live layer still hears purges from elsewhere.
    let request = post("/", "kept");
    fetch(&live.layer(inner.clone()), request.clone()).await;
    let other = IdempotencyLayer::builder().redis(redis.clone()).build();
    other.purge(&key_of(&live, &request).await).await;
    assert!(l1_emptied(&live).await);
    drop((live, other));
    assert!(eventually(Duration::from_secs(2), || redis.l1_subscribers() == 0).await);
}

/// `request` asking for a fresh answer, to store over the entry.
fn refresh(
    request: &http::Request<http_body_util::Full<bytes::Bytes>>,
) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    let mut refresh = request.clone();
    refresh
        .headers_mut()
        .insert("cache-control", http::HeaderValue::from_static("no-cache"));
    refresh
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_evicts_the_entry_from_every_instances_l1() {
    let server = RedisServer::start();
    let (inner, calls) = numbered();
    let a = instance(store(&server.url())).await.layer(inner.clone());
    let b = instance(store(&server.url())).await.layer(inner);
    let request = post("/", "q");
    fetch(&a, request.clone()).await;
    assert_eq!(&fetch(&b, request.clone()).await.body[..], b"answer #1");

    assert_eq!(&fetch(&a, refresh(&request)).await.body[..], b"answer #2");
    assert_eq!(calls.get(), 2);
    // b's L1 held the old answer: the refresh evicts it there too.
    let mut seen = Vec::new();
    let fresh = timeout(Duration::from_secs(2), async {
        loop {
            let answer = fetch(&b, request.clone()).await;
            if &answer.body[..] == b"answer #2" {
                return;
            }
            seen.push(answer.body);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(fresh.is_ok(), "b kept answering the old entry: {seen:?}");
    assert_eq!(calls.get(), 2, "b read the fresh answer from redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_read_before_the_first_subscription_do_not_outlive_a_refresh_it_missed() {
    // B's user may read entries but not subscribe to the events channel
    // yet: B is connected, its subscriber keeps retrying. An entry B reads
    // into its L1 meanwhile may miss the refresh that replaces it; once B
    // subscribes, what its L1 holds from before cannot be trusted.
    let server = RedisServer::start();
    server.cli(&[
        "ACL",
        "SETUSER",
        "late",
        "on",
        ">secret",
        "~*",
        "resetchannels",
        "+@all",
    ]);
    let (inner, calls) = numbered();
    let a = instance(store(&server.url())).await.layer(inner.clone());
    let b_url = format!("redis://late:secret@127.0.0.1:{}/", server.port());
    let b_layer = instance(store(&b_url)).await;
    let b = b_layer.clone().layer(inner);
    let request = post("/", "q");
    fetch(&a, request.clone()).await;
    assert_eq!(&fetch(&b, request.clone()).await.body[..], b"answer #1");
    assert_eq!(&fetch(&a, refresh(&request)).await.body[..], b"answer #2");
    // Missed by B, which is not subscribed yet.
    assert_eq!(&fetch(&b, request.clone()).await.body[..], b"answer #1");

    server.cli(&["ACL", "SETUSER", "late", "allchannels"]);
    // The subscriber retries with a backoff of up to 2 s.
    let emptied = timeout(Duration::from_secs(10), async {
        while b_layer.l1_usage().await.0 != 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(emptied.is_ok(), "b kept what it read before it subscribed");
    assert_eq!(&fetch(&b, request.clone()).await.body[..], b"answer #2");
    assert_eq!(calls.get(), 2, "b read the fresh answer from redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_add_up_across_instances_that_share_a_secret() {
    let server = RedisServer::start();
    let instance = || async {
        IdempotencyLayer::builder()
            .tenant_secret("one fleet")
            .redis(store(&server.url()).connect().await.unwrap())
            .build()
    };
    let (a, b) = (instance().await, instance().await);
    let (inner, calls) = numbered();
    let (service_a, service_b) = (a.layer(inner.clone()), b.layer(inner));
    let ask = |credential: &'static str| {
        http::Request::post("/v1/chat")
            .header("authorization", credential)
            .body(http_body_util::Full::new(bytes::Bytes::from_static(b"q")))
            .unwrap()
    };
    fetch(&service_a, ask("Bearer sk-alice")).await;
    until("the entry is stored in redis", || a.stats().stored == 1).await;
    for _ in 0..2 {
        fetch(&service_b, ask("Bearer sk-alice")).await;
        fetch(&service_a, ask("Bearer sk-alice")).await;
    }
    fetch(&service_b, ask("Bearer sk-bob")).await;
    assert_eq!(calls.get(), 2, "alice once, bob once");

    let fleet = b.fleet_stats().await.unwrap().unwrap();
    assert_eq!(fleet.tenants.len(), 2, "{:?}", fleet.tenants);
    let alice = &fleet.tenants[0];
    assert_eq!(
        (alice.requests, alice.upstream_calls, alice.calls_saved),
        (5, 1, 4)
    );
    // Both instances name alice alike: her row is one row.
    assert_eq!(alice.tenant, a.stats().tenants[0].tenant);
    assert_eq!(alice.tenant, b.stats().tenants[0].tenant);
    assert!(!format!("{fleet:?}").contains("sk-"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_most_replayed_are_the_best_n_of_every_entry_read() {
    let server = RedisServer::start();
    let (inner, calls) = numbered();
    let a = instance(store(&server.url())).await;
    let service = a.layer(inner);
    // More entries than one window of reads, with hit counts set in Redis:
    // distinct for most, tied for some.
    const ENTRIES: usize = 600;
    let mut redis = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut expected = Vec::new();
    for i in 0..ENTRIES {
        let body: &'static str = Box::leak(format!("question {i}").into_boxed_str());
        let request = post("/", body);
        let key = key_of(&a, &request).await;
        fetch(&service, request).await;
        let hits = if i % 50 == 0 { 900 } else { (i * 7919) % 1000 } as u64;
        expected.push((hits, key));
    }
    assert_eq!(calls.get(), ENTRIES);
    // The store into Redis follows each response: wait for the last.
    let mut stored = 0;
    for _ in 0..500 {
        stored = a.top_entries(usize::MAX).await.unwrap().unwrap().len();
        if stored == ENTRIES {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(stored, ENTRIES);
    for (hits, key) in &expected {
        let _: () = redis::cmd("HSET")
            .arg(entry_name("", key))
            .arg("hits")
            .arg(*hits)
            .query_async(&mut redis)
            .await
            .unwrap();
    }
    // Most hits first; among equals, the smaller key.
    expected.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let ranked = |top: Vec<tower_idempotency::TopEntry>| -> Vec<(u64, tower_idempotency::Key)> {
        top.iter()
            .map(|entry| (entry.stats.hits, entry.key))
            .collect()
    };
    for n in [0, 1, 10, 12, 599, 600, 10_000] {
        let top = a.top_entries(n).await.unwrap().unwrap();
        assert_eq!(ranked(top), expected[..n.min(ENTRIES)].to_vec(), "top {n}");
    }
}
