//! L2 on one machine: a SQLite file; see [`SqliteStore`].

mod worker;

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        mpsc, Arc, PoisonError,
    },
    time::Duration,
};

use bytes::Bytes;
use tokio::sync::oneshot;

use self::worker::{Get, Hits, Outcome, Row, Write};
use super::{
    breaker::{Breaker, Change},
    l2::Lookup,
};
use crate::{
    key::Key,
    record::{codec, now_millis, Record},
};

/// A durable L2 in one SQLite file. Cheap to clone.
///
/// Without Redis, every answer lives in the process's memory and is lost when
/// it restarts. A [`SqliteStore`] is a durable L2 in a single file, with the
/// first seed's table, so its queries run unchanged:
///
/// ```sql
/// CREATE TABLE ai_result_cache (
///     content_hash  TEXT PRIMARY KEY,   -- the request's key, 64 hex digits
///     result        BLOB NOT NULL,      -- the stored response, encoded
///     created_at    INTEGER NOT NULL,   -- ms since the Unix epoch
///     expires_at    INTEGER NOT NULL,   -- ms since the Unix epoch
///     hit_count     INTEGER NOT NULL DEFAULT 0,
///     last_hit_at   INTEGER,            -- ms since the Unix epoch
///     model_version TEXT NOT NULL DEFAULT '', -- the layer's namespace
///     model         TEXT,               -- the model the request asked for
///     tokens        INTEGER,            -- tokens the response reported
///     bytes         INTEGER NOT NULL DEFAULT 0 -- the stored size
/// );
/// ```
///
/// `SELECT SUM(hit_count) FROM ai_result_cache` is the number of upstream
/// calls the file saved.
///
/// # Examples
///
/// ```no_run
/// use tower_idempotency::{IdempotencyLayer, SqliteStore};
///
/// # fn build() -> Result<(), tower_idempotency::SqliteError> {
/// let store = SqliteStore::open("answers.sqlite3")?;
/// let layer = IdempotencyLayer::builder().sqlite(store).build();
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
///
/// # Threads
///
/// SQLite calls block, so none runs on the async runtime: one dedicated
/// thread owns the connection and takes operations from a bounded queue.
/// A request's look-up waits for its answer at most the store's
/// [`timeout`](SqliteStoreBuilder::timeout); a full queue is a miss at once.
/// Hits are counted in memory and written in one transaction per
/// [`flush_interval`](SqliteStoreBuilder::flush_interval), so a hit costs no
/// write on the request's path.
///
/// # Expiry and size
///
/// An expired row is never served, and expired rows are deleted in the
/// background every [`sweep_interval`](SqliteStoreBuilder::sweep_interval).
/// With [`max_bytes`](SqliteStoreBuilder::max_bytes) or
/// [`max_rows`](SqliteStoreBuilder::max_rows) the least recently hit rows are
/// evicted when the file outgrows its budget.
///
/// # Failure
///
/// A locked, read-only, full or corrupt file never fails a request: the
/// operation is a miss (or a store that does not happen), the error is
/// counted and logged once per burst, and after repeated failures a circuit
/// breaker stops asking for a while, then probes. The journal is in WAL mode:
/// a process killed at any point leaves the file with only whole entries.
///
/// # Sharing
///
/// Processes on one machine that open the same file share its entries
/// (SQLite's own locking). Only one L2 is used at a time: a layer has either
/// [`Builder::sqlite`](crate::builder::Builder::sqlite) or `Builder::redis`, the last
/// one set. Concurrent duplicates are coalesced within each process; across
/// processes single flight is Redis's job.
#[derive(Clone)]
pub struct SqliteStore {
    shared: Arc<Shared>,
}

struct Shared {
    reads: mpsc::SyncSender<Get>,
    writes: mpsc::SyncSender<Write>,
    settings: Settings,
    breaker: Breaker,
    /// Hits not yet written, by key: how many, and the last one's time.
    hits: Hits,
    errors: AtomicU64,
    skipped: AtomicU64,
    decode_errors: AtomicU64,
}

#[derive(Debug, Clone)]
pub(crate) struct Settings {
    timeout: Duration,
    write_timeout: Duration,
    pub(crate) flush_interval: Duration,
    pub(crate) sweep_interval: Duration,
    pub(crate) max_bytes: Option<u64>,
    pub(crate) max_rows: Option<u64>,
    breaker_failures: u32,
    breaker_cooldown: Duration,
    queue: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_millis(50),
            write_timeout: Duration::from_millis(500),
            flush_interval: Duration::from_secs(1),
            sweep_interval: Duration::from_secs(60),
            max_bytes: None,
            max_rows: None,
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(2),
            queue: 1024,
        }
    }
}

/// The longest any interval or timeout of the store may be: longer values
/// are clamped to it, so no deadline overflows.
const LONGEST: Duration = Duration::from_secs(24 * 60 * 60);
/// The shortest interval: shorter values (zero included) are raised to it.
const SHORTEST: Duration = Duration::from_millis(1);

fn bounded(duration: Duration) -> Duration {
    duration.clamp(SHORTEST, LONGEST)
}

/// Configures and opens a [`SqliteStore`].
///
/// Made by [`SqliteStore::builder`]. Every setting is clamped to a sane
/// range, so none can make a deadline overflow.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use tower_idempotency::{IdempotencyLayer, SqliteStore};
///
/// # fn main() -> Result<(), tower_idempotency::SqliteError> {
/// # let dir = std::env::temp_dir().join(format!("tower-idempotency-doc-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir).unwrap();
/// # let path = dir.join("answers.sqlite3");
/// let store = SqliteStore::builder(&path)
///     // Keep the file under 256 MiB: the least recently hit rows go first.
///     .max_bytes(256 << 20)
///     .sweep_interval(Duration::from_secs(60))
///     .open()?;
/// let layer = IdempotencyLayer::builder().sqlite(store).build();
/// # drop(layer);
/// # let _ = std::fs::remove_dir_all(&dir);
/// # Ok(())
/// # }
/// ```
#[must_use]
pub struct SqliteStoreBuilder {
    path: PathBuf,
    settings: Settings,
}

impl SqliteStoreBuilder {
    /// How long a request's look-up waits for the file. Default: 50 ms.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.settings.timeout = bounded(timeout);
        self
    }

    /// How long writing an entry, off every request's path, may take, and
    /// how long the file waits for another process's lock. Default: 500 ms.
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        self.settings.write_timeout = bounded(timeout);
        self
    }

    /// How often counted hits are written. Default: 1 s.
    pub fn flush_interval(mut self, interval: Duration) -> Self {
        self.settings.flush_interval = bounded(interval);
        self
    }

    /// How often expired rows are deleted. Default: 60 s.
    pub fn sweep_interval(mut self, interval: Duration) -> Self {
        self.settings.sweep_interval = bounded(interval);
        self
    }

    /// Keep the stored bytes under this budget, evicting the least recently
    /// hit rows. Default: no budget. Zero keeps nothing.
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.settings.max_bytes = Some(bytes);
        self
    }

    /// Keep at most this many rows, evicting the least recently hit.
    /// Default: no limit. Zero keeps nothing.
    pub fn max_rows(mut self, rows: u64) -> Self {
        self.settings.max_rows = Some(rows);
        self
    }

    /// After `failures` consecutive failures, skip the file for `cooldown`,
    /// then probe. Default: 5 failures, 2 s.
    pub fn circuit_breaker(mut self, failures: u32, cooldown: Duration) -> Self {
        self.settings.breaker_failures = failures.max(1);
        self.settings.breaker_cooldown = bounded(cooldown);
        self
    }

    /// Opens (or creates) the file, sets it up and starts the store's thread.
    ///
    /// Fails when the file cannot be opened as a database (a path in a
    /// missing folder, a file that is not SQLite): the application decides
    /// whether to go on without an L2. Failures after this point never fail
    /// a request.
    pub fn open(self) -> Result<SqliteStore, SqliteError> {
        let failed = |source: Box<dyn std::error::Error + Send + Sync>| SqliteError {
            path: self.path.clone(),
            source,
        };
        let hits = Hits::default();
        let (writer, reader) = worker::open(&self.path, self.settings.clone(), Arc::clone(&hits))
            .map_err(|error| failed(Box::new(error)))?;
        let (reads, read_queue) = mpsc::sync_channel(self.settings.queue);
        let (writes, write_queue) = mpsc::sync_channel(self.settings.queue);
        for (name, run) in [
            (
                "tower-idempotency-sqlite-read",
                Box::new(move || reader.run(read_queue)) as Box<dyn FnOnce() + Send>,
            ),
            (
                "tower-idempotency-sqlite-write",
                Box::new(move || writer.run(write_queue)),
            ),
        ] {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(run)
                .map_err(|error| failed(Box::new(error)))?;
        }
        Ok(SqliteStore {
            shared: Arc::new(Shared {
                reads,
                writes,
                breaker: Breaker::new(
                    self.settings.breaker_failures,
                    self.settings.breaker_cooldown,
                ),
                settings: self.settings,
                hits,
                errors: AtomicU64::new(0),
                skipped: AtomicU64::new(0),
                decode_errors: AtomicU64::new(0),
            }),
        })
    }
}

/// A SQLite file that could not be opened as the store.
///
/// Only [`SqliteStoreBuilder::open`] fails with it: afterwards a failing
/// file never fails a request. Its [`source`](std::error::Error::source) is
/// the reason SQLite (or the system) gave.
///
/// # Examples
///
/// ```
/// use tower_idempotency::{IdempotencyLayer, SqliteStore};
///
/// let missing = std::env::temp_dir().join("no-such-folder-tower-idempotency/answers.sqlite3");
/// let layer = match SqliteStore::open(&missing) {
///     Ok(store) => IdempotencyLayer::builder().sqlite(store).build(),
///     Err(error) => {
///         assert!(error.to_string().starts_with("cannot open"));
///         // Go on without a durable L2.
///         IdempotencyLayer::new()
///     }
/// };
/// # drop(layer);
/// ```
#[derive(Debug)]
pub struct SqliteError {
    path: PathBuf,
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl fmt::Display for SqliteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot open {} as the store", self.path.display())
    }
}

impl std::error::Error for SqliteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// Why an operation did not happen.
enum Failure {
    Sqlite(Arc<rusqlite::Error>),
    TimedOut,
    /// The store's thread is gone (it panicked).
    Stopped,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(error) => write!(f, "{error}"),
            Self::TimedOut => f.write_str("timed out"),
            Self::Stopped => f.write_str("the store's thread stopped"),
        }
    }
}

impl SqliteStore {
    /// Opens (or creates) a store at `path` with the default settings.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, SqliteError> {
        Self::builder(path).open()
    }

    /// Starts configuring a store at `path`.
    pub fn builder(path: impl AsRef<Path>) -> SqliteStoreBuilder {
        SqliteStoreBuilder {
            path: path.as_ref().to_owned(),
            settings: Settings::default(),
        }
    }

    /// Operations that failed (an error or a timeout).
    pub fn errors(&self) -> u64 {
        self.shared.errors.load(Relaxed)
    }

    /// Operations not attempted: the breaker was open or the queue full.
    pub fn skipped(&self) -> u64 {
        self.shared.skipped.load(Relaxed)
    }

    /// Rows that did not decode (served as misses).
    pub fn decode_errors(&self) -> u64 {
        self.shared.decode_errors.load(Relaxed)
    }

    /// Writes the hits counted so far now, instead of at the next flush.
    pub async fn flush(&self) {
        self.write(|reply| Write::Flush { reply }).await;
    }

    /// Deletes one entry.
    pub async fn purge(&self, key: &Key) {
        let key = *key;
        self.write(|reply| Write::Purge { key, reply }).await;
    }

    /// Deletes every entry of a namespace (`model_version`); returns how
    /// many, or `None` if the file could not be written.
    pub async fn purge_namespace(&self, namespace: &str) -> Option<u64> {
        let namespace = namespace.to_owned();
        self.write(|reply| Write::PurgeNamespace { namespace, reply })
            .await
    }

    /// The stored, unexpired entry for `key`.
    pub(crate) async fn lookup(&self, key: &Key) -> Lookup {
        let now = now_millis();
        let key = *key;
        let shared = &self.shared;
        let get = |reply| Get { key, now, reply };
        let Some(found) = self.call(&shared.reads, shared.settings.timeout, get).await else {
            return Lookup::Unavailable;
        };
        let Some(bytes) = found else {
            return Lookup::Unavailable;
        };
        match codec::decode(Bytes::from(bytes)) {
            Ok(record) if record.is_fresh_at(now) => {
                self.count_hit(&key);
                Lookup::Hit(Arc::new(record))
            }
            Ok(_) => Lookup::Unavailable,
            Err(error) => {
                self.shared.decode_errors.fetch_add(1, Relaxed);
                tracing::warn!(key = ?key, %error, "an unreadable row in the sqlite store: a miss");
                Lookup::Garbage
            }
        }
    }

    /// Stores a complete answer, off the request's path.
    pub(crate) async fn store(&self, namespace: &str, key: &Key, record: &Record) {
        #[cfg(feature = "ai")]
        let tokens = record
            .info
            .usage
            .map(|usage| i64::try_from(usage.total()).unwrap_or(i64::MAX));
        #[cfg(not(feature = "ai"))]
        let tokens = None;
        let result = codec::encode(record);
        let row = Row {
            key: *key,
            bytes: i64::try_from(result.len()).unwrap_or(i64::MAX),
            result,
            created_at: millis(record.created_at),
            expires_at: millis(record.expires_at),
            namespace: namespace.to_owned(),
            model: record.info.model.clone(),
            tokens,
        };
        self.write(|reply| Write::Put { row, reply }).await;
    }

    /// Counts a hit, written at the next flush.
    pub(crate) fn count_hit(&self, key: &Key) {
        let mut hits = self
            .shared
            .hits
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let entry = hits.entry(*key).or_insert((0, 0));
        entry.0 += 1;
        entry.1 = now_millis();
    }

    /// Sends a write to the writer thread and waits for its commit at most
    /// the write timeout.
    async fn write<T>(&self, op: impl FnOnce(oneshot::Sender<Outcome<T>>) -> Write) -> Option<T> {
        let shared = &self.shared;
        self.call(&shared.writes, shared.settings.write_timeout, op)
            .await
    }

    /// Sends one operation to a thread's queue and waits for its answer at
    /// most `timeout`. `None`: it did not happen (counted and logged).
    async fn call<Op, T>(
        &self,
        queue: &mpsc::SyncSender<Op>,
        timeout: Duration,
        op: impl FnOnce(oneshot::Sender<Outcome<T>>) -> Op,
    ) -> Option<T> {
        let shared = &self.shared;
        if !shared.breaker.permit() {
            shared.skipped.fetch_add(1, Relaxed);
            return None;
        }
        let (reply, answer) = oneshot::channel();
        match queue.try_send(op(reply)) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(_)) => {
                // The thread is behind (a slow disk, a lock held elsewhere):
                // do not queue requests behind it.
                shared.skipped.fetch_add(1, Relaxed);
                return None;
            }
            Err(mpsc::TrySendError::Disconnected(_)) => {
                self.failed(Failure::Stopped);
                return None;
            }
        }
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(Ok(value))) => {
                if shared.breaker.success() == Change::Recovered {
                    tracing::info!("the sqlite store answers again");
                }
                Some(value)
            }
            Ok(Ok(Err(error))) => {
                self.failed(Failure::Sqlite(error));
                None
            }
            Ok(Err(_)) => {
                self.failed(Failure::Stopped);
                None
            }
            Err(_) => {
                self.failed(Failure::TimedOut);
                None
            }
        }
    }

    fn failed(&self, failure: Failure) {
        self.shared.errors.fetch_add(1, Relaxed);
        match self.shared.breaker.failure() {
            Change::FirstFailure => {
                tracing::warn!(error = %failure, "the sqlite store failed: going on without it");
            }
            Change::Opened => tracing::warn!(
                error = %failure,
                "the sqlite store keeps failing: not asking it for a while"
            ),
            Change::None | Change::Recovered => {}
        }
    }
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

/// Milliseconds as SQLite's 64-bit signed integer.
fn millis(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests;
