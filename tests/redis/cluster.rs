//! The same guarantees on a 3-node Redis Cluster.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use tokio::time::timeout;
use tower::Layer;
use tower_idempotency::{IdempotencyLayer, RedisStore};

use crate::{entry_name, key_of, l1_emptied, support::*};
use redis_server::RedisCluster;

async fn instance(cluster: &RedisCluster) -> IdempotencyLayer {
    instance_through(cluster.urls()).await
}

/// An instance that knows the cluster only through `urls`.
async fn instance_through(urls: Vec<String>) -> IdempotencyLayer {
    let redis = RedisStore::cluster_builder(urls)
        .poll_interval(Duration::from_secs(5))
        .flush_interval(Duration::from_millis(50))
        // Generous: these tests are about sharing, on a loaded machine.
        .timeout(Duration::from_millis(500))
        .connect()
        .await
        .expect("connect to the test cluster");
    IdempotencyLayer::builder().redis(redis).build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_shares_entries_calls_and_purges_across_instances() {
    let cluster = RedisCluster::start();
    let (inner, calls) = upstream(|seen: Seen| async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        respond(
            200,
            format!(
                "{} -> call {}",
                String::from_utf8_lossy(&seen.body),
                seen.call
            ),
        )
    });
    let a = instance(&cluster).await;
    let b = instance(&cluster).await;
    let (service_a, service_b) = (a.layer(inner.clone()), b.layer(inner.clone()));

    // Concurrent duplicates over both instances: one call.
    let mut tasks = Vec::new();
    for _ in 0..10 {
        for service in [service_a.clone(), service_b.clone()] {
            tasks.push(tokio::spawn(async move {
                fetch(&service, post("/", "shared")).await
            }));
        }
    }
    for task in tasks {
        let answer = timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&answer.body[..], b"shared -> call 1");
    }
    assert_eq!(calls.get(), 1);

    // Many keys spread over every slot range: a new instance finds them all.
    for i in 0..30 {
        let body: &'static str = Box::leak(format!("prompt {i}").into_boxed_str());
        fetch(&service_a, post("/", body)).await;
    }
    let c = instance(&cluster).await.layer(inner.clone());
    let before = calls.get();
    for i in 0..30 {
        let body: &'static str = Box::leak(format!("prompt {i}").into_boxed_str());
        assert!(fetch(&c, post("/", body))
            .await
            .cache_status()
            .contains("hit"));
    }
    assert_eq!(calls.get(), before, "served from the cluster");
    // Analytics scan every primary.
    let top = a.top_entries(100).await.unwrap().unwrap();
    assert_eq!(
        top.len(),
        31,
        "the shared prompt and 30 others, spread over the nodes"
    );
    assert!(top.iter().all(|entry| entry.stats.hits >= 1));

    // A purge of the namespace reaches every node and every instance.
    a.purge_namespace("").await;
    assert!(l1_emptied(&b).await);
    let before = calls.get();
    fetch(&service_b, post("/", "prompt 3")).await;
    assert_eq!(calls.get(), before + 1);
    let request = post("/", "prompt 4");
    let key = key_of(&a, &request).await;
    fetch(&service_b, request.clone()).await;
    // The store into Redis follows the response: purge once it has landed.
    let mut stored = false;
    for _ in 0..200 {
        let top = a.top_entries(100).await.unwrap().unwrap();
        if top.iter().any(|entry| entry.key == key) {
            stored = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(stored, "b's entry reached the cluster");
    a.purge(&key).await;
    fetch(&service_a, request).await;
    assert_eq!(calls.get(), before + 3);
}

/// A request body whose entry lives on a master other than `avoid`.
async fn body_away_from(
    cluster: &RedisCluster,
    layer: &IdempotencyLayer,
    avoid: usize,
) -> &'static str {
    for i in 0.. {
        let body: &'static str = Box::leak(format!("away {i}").into_boxed_str());
        let key = key_of(layer, &post("/", body)).await;
        if cluster.master_of(cluster.keyslot(&entry_name("", &key)), 1) != avoid {
            return body;
        }
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purges_and_refreshes_reach_every_instance_after_the_subscribers_node_dies() {
    let cluster = RedisCluster::start_partial_coverage();
    let (inner, calls) = numbered();
    // Both subscribe through the first node they are given: node 0. b is
    // given no other: it must find the others itself.
    let a = instance(&cluster).await;
    let b = instance_through(vec![cluster.urls()[0].clone()]).await;
    let (service_a, service_b) = (a.layer(inner.clone()), b.layer(inner));
    let request = post("/", body_away_from(&cluster, &a, 0).await);
    fetch(&service_a, request.clone()).await;
    assert_eq!(
        &fetch(&service_b, request.clone()).await.body[..],
        b"answer #1"
    );

    cluster.node(0).kill();
    // The entry lives on a node that is up: purging it must still reach b.
    a.purge(&key_of(&a, &request).await).await;
    let started = Instant::now();
    assert!(
        l1_emptied(&b).await,
        "b's L1 kept a purged entry once its subscription's node died"
    );
    let purged_after = started.elapsed();
    assert_eq!(
        &fetch(&service_b, request.clone()).await.body[..],
        b"answer #2"
    );

    // A refresh elsewhere evicts b's copy too.
    let mut refresh = request.clone();
    refresh
        .headers_mut()
        .insert("cache-control", http::HeaderValue::from_static("no-cache"));
    assert_eq!(&fetch(&service_a, refresh).await.body[..], b"answer #3");
    let mut seen = Vec::new();
    let fresh = timeout(Duration::from_secs(2), async {
        loop {
            let answer = fetch(&service_b, request.clone()).await;
            if &answer.body[..] == b"answer #3" {
                return;
            }
            seen.push((
                answer.header("cache-status").map(str::to_owned),
                answer.body,
            ));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        fresh.is_ok(),
        "b kept the entry refreshed on a: {:?}",
        &seen[..seen.len().min(3)]
    );
    assert_eq!(calls.get(), 3);

    // A namespace purge names no key: it must find a node that is up.
    for _ in 0..5 {
        assert_eq!(fetch(&service_b, request.clone()).await.status, 200);
        a.purge_namespace("").await;
        assert!(l1_emptied(&b).await, "a namespace purge did not reach b");
    }
    eprintln!("b's L1 was evicted {purged_after:?} after the purge");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purges_reach_every_instance_when_the_subscribers_node_hangs() {
    let cluster = RedisCluster::start_partial_coverage();
    let (inner, calls) = numbered();
    let a = instance(&cluster).await;
    let b = instance(&cluster).await;
    let (service_a, service_b) = (a.layer(inner.clone()), b.layer(inner));
    let request = post("/", body_away_from(&cluster, &a, 0).await);
    fetch(&service_a, request.clone()).await;
    fetch(&service_b, request.clone()).await;
    assert_eq!(calls.get(), 1);

    // Paused, node 0 keeps b's subscription open but delivers nothing.
    cluster.node(0).pause();
    a.purge(&key_of(&a, &request).await).await;
    let started = Instant::now();
    let evicted = timeout(Duration::from_secs(5), async {
        while b.l1_usage().await.0 > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let took = started.elapsed();
    cluster.node(0).resume();
    assert!(
        evicted.is_ok(),
        "b's L1 kept a purged entry while its subscription's node hung"
    );
    eprintln!("b's L1 was evicted {took:?} after the purge, its node hanging");
}

/// Sends every body in `bodies` to each of `services` at once; returns the
/// upstream calls each body cost.
async fn round<S: TestService + Sync>(
    services: &[tower_idempotency::Idempotency<S>],
    bodies: &[&'static str],
    per_body: &Arc<Mutex<HashMap<Bytes, usize>>>,
) -> Vec<usize> {
    let mut tasks = Vec::new();
    for &body in bodies {
        for service in services {
            let service = service.clone();
            tasks.push(tokio::spawn(async move {
                fetch(&service, post("/", body)).await
            }));
        }
    }
    for task in tasks {
        let answer = timeout(Duration::from_secs(20), task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(answer.status, 200);
    }
    let per_body = per_body.lock().unwrap();
    bodies
        .iter()
        .map(|body| per_body.get(body.as_bytes()).copied().unwrap_or(0))
        .collect()
}

fn mean(calls: &[usize]) -> f64 {
    calls.iter().sum::<usize>() as f64 / calls.len() as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_dead_master_only_affects_the_keys_it_owns() {
    const PER_MASTER: usize = 10;
    let cluster = RedisCluster::start_with_replicas(Duration::from_millis(2000));
    let per_body = Arc::new(Mutex::new(HashMap::<Bytes, usize>::new()));
    let (inner, _) = upstream({
        let per_body = Arc::clone(&per_body);
        move |seen: Seen| {
            *per_body
                .lock()
                .unwrap()
                .entry(seen.body.clone())
                .or_default() += 1;
            async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                respond(200, seen.body)
            }
        }
    });
    // Three instances behind a load balancer, each with its own connection.
    let mut layers = Vec::new();
    for _ in 0..3 {
        // A look-up timeout that load on the test machine cannot reach, as
        // in the other cluster tests: a timed-out look-up goes through, and
        // the healthy phase would count that as lost dedupe.
        let redis = RedisStore::cluster_builder(cluster.urls())
            .poll_interval(Duration::from_millis(200))
            .timeout(Duration::from_millis(500))
            .connect()
            .await
            .unwrap();
        layers.push(IdempotencyLayer::builder().redis(redis).build());
    }
    let services: Vec<_> = layers.iter().map(|l| l.layer(inner.clone())).collect();
    // Unique requests, as many on each master.
    let owners = cluster.slot_owners(0);
    let mut batch = 0;
    let mut bodies = async |layer: &IdempotencyLayer| {
        batch += 1;
        let mut by_master: [Vec<&'static str>; 3] = Default::default();
        for i in 0.. {
            let body: &'static str =
                Box::leak(format!("batch {batch} prompt {i}").into_boxed_str());
            let slot = cluster.keyslot(&entry_name("", &key_of(layer, &post("/", body)).await));
            let master = owners.iter().find(|(r, _)| r.contains(&slot)).unwrap().1;
            if by_master[master].len() < PER_MASTER {
                by_master[master].push(body);
            }
            if by_master.iter().all(|b| b.len() == PER_MASTER) {
                break;
            }
        }
        by_master
    };

    let healthy = bodies(&layers[0]).await.concat();
    let calls = round(&services, &healthy, &per_body).await;
    assert!(calls.iter().all(|&n| n == 1), "healthy: {calls:?}");

    let down = bodies(&layers[0]).await;
    cluster.node(1).kill();
    let killed = Instant::now();
    let mut figures = Vec::new();
    for (master, bodies) in down.iter().enumerate() {
        figures.push((master, round(&services, bodies, &per_body).await));
    }
    let measured_for = killed.elapsed();
    let all: Vec<usize> = figures.iter().flat_map(|(_, c)| c.clone()).collect();
    eprintln!(
        "one master down ({measured_for:?} after the kill): {:.2} calls per unique request; \
         by master: {figures:?}",
        mean(&all)
    );
    for (master, calls) in &figures {
        if *master != 1 {
            assert!(
                calls.iter().all(|&n| n == 1),
                "keys on master {master}, which is up, lost their dedupe: {calls:?}"
            );
        }
    }
    assert!(
        mean(&all) <= 1.7,
        "{:.2} calls per unique request",
        mean(&all)
    );

    // The replica takes over; dedupe comes back for every key.
    let recovered = timeout(Duration::from_secs(20), async {
        loop {
            let batch = bodies(&layers[0]).await.concat();
            let calls = round(&services, &batch, &per_body).await;
            if calls.iter().all(|&n| n == 1) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(
        recovered.is_ok(),
        "dedupe never came back after the failover"
    );
    eprintln!(
        "1.00 calls per unique request again {:?} after the kill",
        killed.elapsed()
    );
}
