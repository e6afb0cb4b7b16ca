use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, Version};

use super::*;
use crate::record::Meta;

fn record(body: &'static str, ttl: Duration) -> Record {
    let now = now_millis();
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    let info = Meta {
        model: Some("gpt-4o".into()),
        ..Meta::default()
    };
    Record {
        status: StatusCode::OK,
        version: Version::HTTP_11,
        headers,
        body: Bytes::from_static(body.as_bytes()),
        trailers: None,
        created_at: now,
        expires_at: now + ttl.as_millis() as u64,
        meta: info.encode(),
        info,
    }
}

fn key(n: u8) -> Key {
    Key::from_bytes([n; 32])
}

fn open(dir: &tempfile::TempDir) -> SqliteStore {
    SqliteStore::open(dir.path().join("store.sqlite3")).unwrap()
}

fn sql<T: rusqlite::types::FromSql>(dir: &tempfile::TempDir, query: &str) -> T {
    let conn = rusqlite::Connection::open(dir.path().join("store.sqlite3")).unwrap();
    conn.query_row(query, [], |row| row.get(0)).unwrap()
}

fn hit(lookup: Lookup) -> Arc<Record> {
    match lookup {
        Lookup::Hit(record) => record,
        _ => panic!("expected a hit"),
    }
}

#[tokio::test]
async fn a_stored_answer_is_found_byte_for_byte_and_its_hits_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    assert!(matches!(store.lookup(&key(1)).await, Lookup::Unavailable));
    store
        .store(
            "v1",
            &key(1),
            &record("{\"answer\":42}", Duration::from_secs(60)),
        )
        .await;
    for _ in 0..3 {
        let found = hit(store.lookup(&key(1)).await);
        assert_eq!(found.body, "{\"answer\":42}");
        assert_eq!(found.headers["content-type"], "application/json");
    }
    store.count_hit(&key(1)); // an L1 hit
    store.flush().await;
    // The seed's ROI query runs unchanged.
    let saved: i64 = sql(&dir, "SELECT SUM(hit_count) FROM ai_result_cache");
    assert_eq!(saved, 4);
    let version: String = sql(&dir, "SELECT model_version FROM ai_result_cache");
    assert_eq!(version, "v1");
    let model: String = sql(&dir, "SELECT model FROM ai_result_cache");
    assert_eq!(model, "gpt-4o");
    let hash: String = sql(&dir, "SELECT content_hash FROM ai_result_cache");
    assert_eq!(hash, key(1).to_hex());
}

#[tokio::test]
async fn an_expired_row_is_never_served_and_is_swept() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::builder(dir.path().join("store.sqlite3"))
        .sweep_interval(Duration::from_millis(50))
        .open()
        .unwrap();
    store
        .store("", &key(1), &record("short", Duration::from_millis(30)))
        .await;
    store
        .store("", &key(2), &record("long", Duration::from_secs(60)))
        .await;
    tokio::time::sleep(Duration::from_millis(40)).await;
    assert!(matches!(store.lookup(&key(1)).await, Lookup::Unavailable));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rows: i64 = sql(&dir, "SELECT COUNT(*) FROM ai_result_cache");
    assert_eq!(rows, 1, "the expired row was deleted");
    hit(store.lookup(&key(2)).await);
}

#[tokio::test]
async fn purge_and_purge_namespace_delete_what_they_name() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let long = Duration::from_secs(60);
    store.store("a", &key(1), &record("1", long)).await;
    store.store("a", &key(2), &record("2", long)).await;
    store.store("b", &key(3), &record("3", long)).await;
    store.purge(&key(1)).await;
    assert!(matches!(store.lookup(&key(1)).await, Lookup::Unavailable));
    hit(store.lookup(&key(2)).await);
    assert_eq!(store.purge_namespace("a").await, Some(1));
    assert!(matches!(store.lookup(&key(2)).await, Lookup::Unavailable));
    hit(store.lookup(&key(3)).await);
}

#[tokio::test]
async fn over_budget_the_least_recently_hit_rows_go_first() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::builder(dir.path().join("store.sqlite3"))
        .max_rows(3)
        .open()
        .unwrap();
    let long = Duration::from_secs(60);
    for n in 1..=3 {
        store.store("", &key(n), &record("x", long)).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Key 1 is the oldest, but hit: key 2 is the least recently used.
    hit(store.lookup(&key(1)).await);
    tokio::time::sleep(Duration::from_millis(5)).await;
    store.store("", &key(4), &record("x", long)).await;
    let rows: i64 = sql(&dir, "SELECT COUNT(*) FROM ai_result_cache");
    assert_eq!(rows, 3);
    hit(store.lookup(&key(1)).await);
    assert!(matches!(store.lookup(&key(2)).await, Lookup::Unavailable));
    hit(store.lookup(&key(3)).await);
    hit(store.lookup(&key(4)).await);
}

#[tokio::test]
async fn a_byte_budget_keeps_the_file_under_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::builder(dir.path().join("store.sqlite3"))
        .max_bytes(4_000)
        .open()
        .unwrap();
    for n in 0..100 {
        store
            .store(
                "",
                &key(n),
                &record("a body of some size", Duration::from_secs(60)),
            )
            .await;
    }
    let bytes: i64 = sql(&dir, "SELECT SUM(bytes) FROM ai_result_cache");
    assert!(bytes <= 4_000, "{bytes} bytes stored");
    hit(store.lookup(&key(99)).await);
}

#[tokio::test]
async fn garbage_in_the_file_is_a_miss() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store
        .store("", &key(1), &record("fine", Duration::from_secs(60)))
        .await;
    let conn = rusqlite::Connection::open(dir.path().join("store.sqlite3")).unwrap();
    conn.execute("UPDATE ai_result_cache SET result = x'00ff00ff'", [])
        .unwrap();
    assert!(matches!(store.lookup(&key(1)).await, Lookup::Garbage));
    assert_eq!(store.decode_errors(), 1);
}

#[tokio::test]
async fn a_file_that_is_not_sqlite_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.sqlite3");
    std::fs::write(&path, vec![0x5a; 8192]).unwrap();
    let error = SqliteStore::open(&path).unwrap_err();
    assert!(error.to_string().contains("cannot open"), "{error}");
}

#[tokio::test]
async fn two_stores_on_one_file_share_entries() {
    let dir = tempfile::tempdir().unwrap();
    let one = open(&dir);
    let two = open(&dir);
    one.store("", &key(7), &record("shared", Duration::from_secs(60)))
        .await;
    assert_eq!(hit(two.lookup(&key(7)).await).body, "shared");
}

#[tokio::test]
async fn a_locked_file_is_a_miss_not_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::builder(dir.path().join("store.sqlite3"))
        .write_timeout(Duration::from_millis(50))
        .open()
        .unwrap();
    // Another process holds the write lock.
    let other = rusqlite::Connection::open(dir.path().join("store.sqlite3")).unwrap();
    other.execute_batch("BEGIN EXCLUSIVE").unwrap();
    store
        .store("", &key(1), &record("blocked", Duration::from_secs(60)))
        .await;
    assert!(store.errors() >= 1);
    other.execute_batch("ROLLBACK").unwrap();
    store
        .store("", &key(1), &record("written", Duration::from_secs(60)))
        .await;
    assert_eq!(hit(store.lookup(&key(1)).await).body, "written");
}

#[test]
fn extreme_settings_do_not_panic() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::builder(dir.path().join("store.sqlite3"))
        .timeout(Duration::MAX)
        .write_timeout(Duration::ZERO)
        .flush_interval(Duration::MAX)
        .sweep_interval(Duration::ZERO)
        .circuit_breaker(0, Duration::MAX)
        .max_bytes(u64::MAX)
        .max_rows(0)
        .open()
        .unwrap();
    drop(store);
}
