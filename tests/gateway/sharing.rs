//! Two gateways sharing one Redis (or one Redis Cluster): concurrent
//! duplicates spread over both cost one upstream call.

use std::{sync::Arc, time::Duration};

use tokio::{sync::Semaphore, time::timeout};

use crate::{
    harness::{client, post_json, until, Gateway},
    support::{
        redis_server::{RedisCluster, RedisServer},
        Answer,
    },
    upstream::Upstream,
};

const PROMPT: &str =
    r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Describe this photo"}]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_duplicates_split_across_two_gateways_make_one_upstream_call() {
    let redis = RedisServer::start();
    twenty_duplicates_make_one_call(&["--redis", &redis.url()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_on_a_redis_cluster_share_calls_too() {
    let cluster = RedisCluster::start();
    twenty_duplicates_make_one_call(&["--redis-cluster", &cluster.urls().join(",")]).await;
}

/// Starts two gateways with `redis_args`, sends them twenty identical
/// requests (ten each) while the upstream holds its answer, and checks that
/// the upstream was called once and every answer is the same bytes.
async fn twenty_duplicates_make_one_call(redis_args: &[&str]) {
    let gate = Arc::new(Semaphore::new(0));
    let upstream = Upstream::echo_gated(Arc::clone(&gate)).await;
    let url = upstream.url();
    let mut args = vec!["--upstream", &url];
    args.extend_from_slice(redis_args);
    let gateways = [Gateway::start(&args), Gateway::start(&args)];

    let client = client();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let request = post_json(&gateways[i % 2].url("/v1/chat/completions"), PROMPT);
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            Answer::read(client.request(request).await.expect("the gateway answers")).await
        }));
    }

    // Hold the upstream until all twenty requests are inside the gateways.
    let seen = until(Duration::from_secs(10), || async {
        let mut total = 0;
        for gateway in &gateways {
            total += gateway.stats().await["process"]["requests"]
                .as_u64()
                .unwrap();
        }
        total == 20
    })
    .await;
    assert!(seen, "all twenty requests reach the two gateways");
    let called = until(Duration::from_secs(10), || async {
        upstream.calls.get() > 0
    })
    .await;
    assert!(called, "one of them reaches the upstream");
    // Give any second call time to show up before the answer is released.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(upstream.calls.get(), 1, "one call while the others wait");
    gate.add_permits(100);

    let mut answers = Vec::new();
    for task in tasks {
        let answer = timeout(Duration::from_secs(20), task)
            .await
            .expect("every request is answered")
            .unwrap();
        answers.push(answer);
    }

    assert_eq!(
        upstream.calls.get(),
        1,
        "one upstream call for both gateways"
    );
    for answer in &answers {
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, answers[0].body, "byte-identical responses");
    }
    let leaders: Vec<&str> = answers
        .iter()
        .map(Answer::cache_status)
        .filter(|status| status.ends_with("fwd=uri-miss; stored"))
        .collect();
    assert_eq!(
        leaders.len(),
        1,
        "one response came from upstream: {leaders:?}"
    );
    assert!(answers.iter().all(|answer| {
        let status = answer.cache_status();
        status.ends_with("stored") || status.ends_with("collapsed") || status.contains("; hit")
    }));

    let mut upstream_calls = 0;
    for gateway in &gateways {
        let stats = gateway.stats().await;
        upstream_calls += stats["process"]["upstream_calls"].as_u64().unwrap();
        assert_eq!(stats["process"]["requests"], 10);
    }
    assert_eq!(upstream_calls, 1);
}
