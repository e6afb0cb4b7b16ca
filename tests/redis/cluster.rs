//! The same guarantees on a 3-node Redis Cluster.

use std::time::Duration;

use tokio::time::timeout;
use tower::Layer;
use tower_idempotency::{IdempotencyLayer, RedisStore};

use crate::{key_of, l1_emptied, support::*};
use redis_server::RedisCluster;

async fn instance(cluster: &RedisCluster) -> IdempotencyLayer {
    let redis = RedisStore::cluster_builder(cluster.urls())
        .poll_interval(Duration::from_secs(5))
        .flush_interval(Duration::from_millis(50))
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
