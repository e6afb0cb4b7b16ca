//! The SQLite L2 through the layer: answers kept across restarts, the
//! seed's queries on the file, and a broken file that never fails a request.

#[path = "../support/mod.rs"]
mod support;

use std::time::Duration;

use support::{fetch, numbered, post};
use tower::ServiceBuilder;
use tower_idempotency::{IdempotencyLayer, SqliteStore};

fn layer(path: &std::path::Path) -> IdempotencyLayer {
    IdempotencyLayer::builder()
        .namespace("v1")
        .sqlite(SqliteStore::open(path).unwrap())
        .build()
}

fn query<T: rusqlite::types::FromSql>(path: &std::path::Path, sql: &str) -> T {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row(sql, [], |row| row.get(0)).unwrap()
}

#[tokio::test]
async fn an_answer_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("answers.sqlite3");
    let (upstream, calls) = numbered();

    let first = ServiceBuilder::new()
        .layer(layer(&path))
        .service(upstream.clone());
    let answer = fetch(&first, post("/v1/chat", "same question")).await;
    assert_eq!(answer.body, "answer #1");
    // The entry is written to the file just after its last byte is sent: a
    // process stopped before that keeps nothing.
    let written = support::eventually(Duration::from_secs(5), || {
        query::<i64>(&path, "SELECT COUNT(*) FROM ai_result_cache") == 1
    })
    .await;
    assert!(written);
    drop(first);

    // A new process: an empty L1, the same file.
    let restarted = layer(&path);
    let second = ServiceBuilder::new()
        .layer(restarted.clone())
        .service(upstream.clone());
    let replay = fetch(&second, post("/v1/chat", "same question")).await;
    assert_eq!(replay.body, "answer #1");
    assert!(
        replay.cache_status().contains("; hit"),
        "{}",
        replay.cache_status()
    );
    assert_eq!(calls.get(), 1);
    assert_eq!(restarted.stats().hits.l2, 1);

    // Then from L1: no second read of the file, but the hit is counted.
    let again = fetch(&second, post("/v1/chat", "same question")).await;
    assert_eq!(again.body, "answer #1");
    assert_eq!(restarted.stats().hits.l1, 1);
}

#[tokio::test]
async fn the_seeds_roi_query_counts_the_calls_saved() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("answers.sqlite3");
    let (upstream, calls) = numbered();
    let store = SqliteStore::builder(&path)
        .flush_interval(Duration::from_millis(20))
        .open()
        .unwrap();
    let layer = IdempotencyLayer::builder()
        .namespace("v1")
        .sqlite(store)
        .build();
    let service = ServiceBuilder::new().layer(layer).service(upstream);
    for _ in 0..5 {
        fetch(&service, post("/a", "one")).await;
    }
    for _ in 0..3 {
        fetch(&service, post("/b", "two")).await;
    }
    assert_eq!(calls.get(), 2);
    // The rows are written just after their answers end, the hits at the
    // next flush: until then the sum is NULL, then grows.
    let saved = support::eventually(Duration::from_secs(5), || {
        query::<i64>(
            &path,
            "SELECT COALESCE(SUM(hit_count), 0) FROM ai_result_cache",
        ) == 6
    })
    .await;
    assert!(saved, "4 + 2 repeats were answered from storage");
    // The seed's own query, unchanged.
    let saved: i64 = query(&path, "SELECT SUM(hit_count) FROM ai_result_cache");
    assert_eq!(saved, 6);
    let by_version: i64 = query(
        &path,
        "SELECT SUM(hit_count) FROM ai_result_cache WHERE model_version = 'v1'",
    );
    assert_eq!(by_version, 6);
}

#[tokio::test]
async fn purge_and_purge_namespace_reach_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("answers.sqlite3");
    let (upstream, calls) = numbered();
    let layer = layer(&path);
    let service = ServiceBuilder::new()
        .layer(layer.clone())
        .service(upstream.clone());
    let answer = fetch(&service, post("/a", "one")).await;
    let key = answer_key(&service).await;
    layer.purge(&key).await;
    // A restart: nothing in L1, and the file forgot the entry.
    let fresh = ServiceBuilder::new()
        .layer(self::layer(&path))
        .service(upstream.clone());
    assert_eq!(fetch(&fresh, post("/a", "one")).await.body, "answer #2");
    assert_eq!(answer.body, "answer #1");
    // The entry is written to the file just after its last byte is sent.
    let written = support::eventually(Duration::from_secs(5), || {
        query::<i64>(&path, "SELECT COUNT(*) FROM ai_result_cache") == 1
    })
    .await;
    assert!(written);
    layer.purge_namespace("v1").await;
    let rows: i64 = query(&path, "SELECT COUNT(*) FROM ai_result_cache");
    assert_eq!(rows, 0);
    assert_eq!(calls.get(), 2);
}

/// The key of `POST /a` "one", from a response's extensions.
async fn answer_key<S>(service: &S) -> tower_idempotency::Key
where
    S: tower::Service<
            http::Request<http_body_util::Full<bytes::Bytes>>,
            Response = http::Response<tower_idempotency::ResponseBody<support::TestBody>>,
        > + Clone,
    S::Error: std::fmt::Debug,
{
    use tower::ServiceExt;
    let response = service.clone().oneshot(post("/a", "one")).await.unwrap();
    *response
        .extensions()
        .get::<tower_idempotency::Key>()
        .expect("the key in the extensions")
}

#[tokio::test]
async fn a_corrupt_file_never_fails_a_request() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("answers.sqlite3");
    let (upstream, calls) = numbered();
    {
        let service = ServiceBuilder::new()
            .layer(layer(&path))
            .service(upstream.clone());
        for n in 0..50 {
            let body: &'static str =
                Box::leak(format!("question {n:04}").repeat(200).into_boxed_str());
            fetch(&service, post("/a", body)).await;
        }
    }
    // The store's thread closes the file (and folds the journal into it)
    // once the last handle is gone.
    let wal = dir.path().join("answers.sqlite3-wal");
    let closed = support::eventually(Duration::from_secs(5), || {
        query::<i64>(&path, "SELECT COUNT(*) FROM ai_result_cache") == 50 && !wal.exists()
    })
    .await;
    assert!(closed);
    // Garbage over every page but the first (the header and the schema).
    let mut bytes = std::fs::read(&path).unwrap();
    let page = 4096;
    assert!(bytes.len() > 4 * page, "{} bytes", bytes.len());
    bytes[page..].iter_mut().for_each(|b| *b = 0xa5);
    std::fs::write(&path, bytes).unwrap();

    let layer = layer(&path);
    let service = ServiceBuilder::new().layer(layer.clone()).service(upstream);
    for n in 0..50 {
        let body: &'static str = Box::leak(format!("question {n:04}").repeat(200).into_boxed_str());
        let answer = fetch(&service, post("/a", body)).await;
        assert_eq!(answer.status, 200);
    }
    assert_eq!(calls.get(), 100, "nothing was served from the corrupt file");
    let health = layer.stats().store;
    assert!(
        health.errors + health.skipped + health.unreadable > 0,
        "the corrupt file was noticed: {health:?}"
    );
}

/// Makes a file read-only for this process, for the guard's life: without
/// write permission, or, for root (whom permissions do not stop), with the
/// immutable attribute.
struct ReadOnly(std::path::PathBuf);

#[allow(unsafe_code)]
fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

impl ReadOnly {
    fn new(path: &std::path::Path) -> Self {
        if is_root() {
            let status = std::process::Command::new("chattr")
                .arg("+i")
                .arg(path)
                .status()
                .expect("chattr (e2fsprogs) makes the file read-only, even for root");
            assert!(status.success(), "chattr +i failed on {}", path.display());
        } else {
            let mut permissions = std::fs::metadata(path).unwrap().permissions();
            permissions.set_readonly(true);
            std::fs::set_permissions(path, permissions).unwrap();
        }
        Self(path.to_owned())
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        if is_root() {
            let _ = std::process::Command::new("chattr")
                .arg("-i")
                .arg(&self.0)
                .status();
        }
    }
}

#[tokio::test]
async fn a_read_only_file_still_answers_every_request() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("answers.sqlite3");
    let (upstream, calls) = numbered();
    {
        let service = ServiceBuilder::new()
            .layer(layer(&path))
            .service(upstream.clone());
        fetch(&service, post("/a", "kept")).await;
    }
    let wal = dir.path().join("answers.sqlite3-wal");
    let closed = support::eventually(Duration::from_secs(5), || {
        query::<i64>(&path, "SELECT COUNT(*) FROM ai_result_cache") == 1 && !wal.exists()
    })
    .await;
    assert!(closed);
    let _read_only = ReadOnly::new(&path);

    // What was stored is still served; what is new is answered (and kept
    // in memory) even if the file cannot take it.
    let store = SqliteStore::open(&path).expect("a read-only file opens for reading");
    let layer = IdempotencyLayer::builder()
        .namespace("v1")
        .sqlite(store)
        .build();
    let service = ServiceBuilder::new().layer(layer).service(upstream);
    assert_eq!(fetch(&service, post("/a", "kept")).await.body, "answer #1");
    for _ in 0..2 {
        let answer = fetch(&service, post("/a", "new one")).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, "answer #2");
    }
    assert_eq!(calls.get(), 2);
}

/// A response that varies on a header outside the key, read back from the
/// file by a process with an empty L1, reaches only requests with the same
/// value of that header.
#[tokio::test]
async fn an_entry_read_from_the_file_honours_vary() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("answers.sqlite3");
    let (upstream, calls) = support::upstream(|seen: support::Seen| async move {
        let origin = seen.head.headers["origin"].to_str().unwrap().to_owned();
        let mut response = support::respond(200, format!("for {origin}"));
        response
            .headers_mut()
            .insert("vary", http::HeaderValue::from_static("origin"));
        response
    });
    let from = |origin: &'static str| {
        let mut request = post("/v1/chat", "same question");
        request
            .headers_mut()
            .insert("origin", http::HeaderValue::from_static(origin));
        request
    };
    {
        let service = ServiceBuilder::new()
            .layer(layer(&path))
            .service(upstream.clone());
        assert_eq!(
            fetch(&service, from("https://a.example")).await.body,
            "for https://a.example"
        );
    }
    let stored = support::eventually(Duration::from_secs(5), || {
        query::<i64>(&path, "SELECT COUNT(*) FROM ai_result_cache") == 1
    })
    .await;
    assert!(stored);

    // A restart: L1 is empty, the file has origin a's answer.
    let service = ServiceBuilder::new()
        .layer(layer(&path))
        .service(upstream.clone());
    let other = fetch(&service, from("https://b.example")).await;
    assert_eq!(
        other.body, "for https://b.example",
        "origin a's answer went to origin b"
    );
    assert_eq!(calls.get(), 2);
}
