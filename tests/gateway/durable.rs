//! `--sqlite PATH`: answers kept in a file across restarts, even a `kill -9`.

use std::time::Duration;

use crate::{
    harness::{post_json, send, until, Gateway},
    upstream::Upstream,
};

fn rows(path: &std::path::Path) -> i64 {
    rusqlite::Connection::open(path)
        .and_then(|conn| {
            conn.query_row("SELECT COUNT(*) FROM ai_result_cache", [], |row| row.get(0))
        })
        .unwrap_or(-1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_survives_a_killed_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("answers.sqlite3");
    let file = path.to_str().unwrap();
    let upstream = Upstream::echo().await;
    let question = r#"{"model":"m","messages":[{"role":"user","content":"kept?"}]}"#;

    let mut first = Gateway::start(&["--upstream", &upstream.url(), "--sqlite", file]);
    let answer = send(post_json(&first.url("/v1/chat/completions"), question)).await;
    assert_eq!(answer.status, 200);
    assert!(until(Duration::from_secs(5), || async { rows(&path) == 1 }).await);
    first.signal("KILL");
    first.wait_exit(Duration::from_secs(5)).await;

    let second = Gateway::start(&["--upstream", &upstream.url(), "--sqlite", file]);
    let replay = send(post_json(&second.url("/v1/chat/completions"), question)).await;
    assert!(replay.cache_status().contains("; hit"), "{replay:?}");
    assert_eq!(replay.body, answer.body);
    assert_eq!(
        upstream.received().len(),
        1,
        "one paid call across the restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_is_not_a_database_leaves_the_gateway_serving() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("answers.sqlite3");
    std::fs::write(&path, vec![0x5a; 8192]).unwrap();
    let upstream = Upstream::echo().await;
    let gateway = Gateway::start(&[
        "--upstream",
        &upstream.url(),
        "--sqlite",
        path.to_str().unwrap(),
    ]);
    for _ in 0..2 {
        let answer = send(post_json(
            &gateway.url("/v1/chat/completions"),
            r#"{"q":1}"#,
        ))
        .await;
        assert_eq!(answer.status, 200);
    }
    assert_eq!(
        upstream.received().len(),
        1,
        "the in-process cache still works"
    );
    assert!(
        gateway.log().contains("cannot use the sqlite file"),
        "{}",
        gateway.log()
    );
}
