//! Two gateways sharing one Redis: concurrent duplicates spread over both
//! cost one upstream call.

use std::{sync::Arc, time::Duration};

use tokio::{sync::Semaphore, time::timeout};

use crate::{
    harness::{client, post_json, until, Gateway},
    support::{redis_server::RedisServer, Answer},
    upstream::Upstream,
};

const PROMPT: &str =
    r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Describe this photo"}]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_duplicates_split_across_two_gateways_make_one_upstream_call() {
    let redis = RedisServer::start();
    let gate = Arc::new(Semaphore::new(0));
    let upstream = Upstream::echo_gated(Arc::clone(&gate)).await;
    let args = ["--upstream", &upstream.url(), "--redis", &redis.url()];
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
