//! The store's two threads. The reader owns a read-only connection and
//! answers look-ups; WAL lets it read while the writer writes, so a look-up
//! never waits behind a write. The writer owns the other connection: it
//! commits what queued up since its last commit in one transaction (one
//! fsync for many entries), writes counted hits, deletes expired rows and
//! keeps the budget.

use std::{
    collections::HashMap,
    mem,
    path::Path,
    sync::{mpsc, Arc, Mutex, PoisonError},
    time::Instant,
};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use tokio::sync::oneshot;

use super::{millis, Settings};
use crate::{key::Key, record::now_millis};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS ai_result_cache (
    content_hash  TEXT PRIMARY KEY,
    result        BLOB NOT NULL,
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    hit_count     INTEGER NOT NULL DEFAULT 0,
    last_hit_at   INTEGER,
    model_version TEXT NOT NULL DEFAULT '',
    model         TEXT,
    tokens        INTEGER,
    bytes         INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS ai_result_cache_expires_at ON ai_result_cache (expires_at);
CREATE INDEX IF NOT EXISTS ai_result_cache_model_version ON ai_result_cache (model_version);
CREATE INDEX IF NOT EXISTS ai_result_cache_recency
    ON ai_result_cache (COALESCE(last_hit_at, created_at));
";

/// Rows evicted per statement while the file is over its budget.
const EVICT_BATCH: i64 = 64;
/// Writes committed together at most.
const WRITE_BATCH: usize = 256;

/// An operation's outcome. The error is shared: one failed commit fails
/// every write it carried.
pub(super) type Outcome<T> = Result<T, Arc<rusqlite::Error>>;
type Reply<T> = oneshot::Sender<Outcome<T>>;

/// Pending hit counts, by key: how many, and the last one's time.
pub(super) type Hits = Arc<Mutex<HashMap<Key, (u64, u64)>>>;

/// A look-up, for the reader.
pub(super) struct Get {
    pub(super) key: Key,
    pub(super) now: u64,
    pub(super) reply: Reply<Option<Vec<u8>>>,
}

/// A write, for the writer.
pub(super) enum Write {
    Put {
        row: Row,
        reply: Reply<()>,
    },
    Purge {
        key: Key,
        reply: Reply<()>,
    },
    PurgeNamespace {
        namespace: String,
        reply: Reply<u64>,
    },
    Flush {
        reply: Reply<()>,
    },
}

/// An entry as written.
pub(super) struct Row {
    pub(super) key: Key,
    pub(super) result: Vec<u8>,
    pub(super) created_at: i64,
    pub(super) expires_at: i64,
    pub(super) namespace: String,
    pub(super) model: Option<String>,
    pub(super) tokens: Option<i64>,
    pub(super) bytes: i64,
}

/// Opens the file for writing, sets it up, and opens a second connection
/// for reading.
pub(super) fn open(
    path: &Path,
    settings: Settings,
    hits: Hits,
) -> rusqlite::Result<(Writer, Reader)> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(settings.write_timeout)?;
    // WAL: readers never wait for the writer, and a process killed at any
    // point leaves only whole transactions. NORMAL is durable against a
    // process crash (not a power cut), at far less fsync.
    let _mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.execute_batch(SCHEMA)?;
    let mut writer = Writer {
        conn,
        settings,
        hits,
        written: (0, 0),
        failing: false,
    };
    // A file opened with a smaller budget than it holds is trimmed now.
    writer.enforce_budget()?;
    let read = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    read.busy_timeout(writer.settings.write_timeout)?;
    Ok((writer, Reader { conn: read }))
}

pub(super) struct Reader {
    conn: Connection,
}

impl Reader {
    /// Answers look-ups until every handle of the store is gone.
    pub(super) fn run(self, queue: mpsc::Receiver<Get>) {
        while let Ok(Get { key, now, reply }) = queue.recv() {
            let _ = reply.send(self.get(&key, now).map_err(Arc::new));
        }
    }

    fn get(&self, key: &Key, now: u64) -> rusqlite::Result<Option<Vec<u8>>> {
        self.conn
            .prepare_cached(
                "SELECT result FROM ai_result_cache WHERE content_hash = ?1 AND expires_at > ?2",
            )?
            .query_row(params![key.to_hex(), millis(now)], |row| row.get(0))
            .optional()
    }
}

pub(super) struct Writer {
    conn: Connection,
    settings: Settings,
    hits: Hits,
    /// Bytes and rows written since the budget was last checked exactly.
    written: (i64, i64),
    /// Whether the last background job failed (log once per burst).
    failing: bool,
}

/// A write applied inside a transaction, its reply held until the commit.
enum Applied {
    Unit(Reply<()>, rusqlite::Result<()>),
    Count(Reply<u64>, rusqlite::Result<u64>),
}

impl Writer {
    /// Serves the queue until every handle of the store is gone, then writes
    /// the hits still counted.
    pub(super) fn run(mut self, queue: mpsc::Receiver<Write>) {
        let mut next_flush = Instant::now() + self.settings.flush_interval;
        let mut next_sweep = Instant::now() + self.settings.sweep_interval;
        loop {
            let wait = next_flush
                .min(next_sweep)
                .saturating_duration_since(Instant::now());
            match queue.recv_timeout(wait) {
                Ok(first) => {
                    let mut batch = vec![first];
                    while batch.len() < WRITE_BATCH {
                        match queue.try_recv() {
                            Ok(write) => batch.push(write),
                            Err(_) => break,
                        }
                    }
                    self.commit(batch);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let result = self.flush_hits();
                    self.background(result);
                    return;
                }
            }
            let now = Instant::now();
            if now >= next_flush {
                let result = self.flush_hits();
                self.background(result);
                next_flush = now + self.settings.flush_interval;
            }
            if now >= next_sweep {
                let result = self.sweep();
                self.background(result);
                next_sweep = now + self.settings.sweep_interval;
            }
        }
    }

    /// Applies a batch of writes in one transaction, then answers each.
    /// A batch whose commit fails fails every write it carried.
    fn commit(&mut self, batch: Vec<Write>) {
        let begun = self.conn.execute_batch("BEGIN IMMEDIATE");
        let applied: Vec<Applied> = batch.into_iter().map(|w| self.apply(w)).collect();
        if let Err(error) = begun.and_then(|()| self.conn.execute_batch("COMMIT")) {
            let _ = self.conn.execute_batch("ROLLBACK");
            let error = Arc::new(error);
            for done in applied {
                match done {
                    Applied::Unit(reply, _) => drop(reply.send(Err(Arc::clone(&error)))),
                    Applied::Count(reply, _) => drop(reply.send(Err(Arc::clone(&error)))),
                }
            }
            return;
        }
        // Within the budget again before anyone hears of the write.
        if self.may_be_over_budget() {
            let result = self.enforce_budget();
            self.background(result);
        }
        for done in applied {
            match done {
                Applied::Unit(reply, result) => drop(reply.send(result.map_err(Arc::new))),
                Applied::Count(reply, result) => drop(reply.send(result.map_err(Arc::new))),
            }
        }
    }

    fn apply(&mut self, write: Write) -> Applied {
        match write {
            Write::Put { row, reply } => Applied::Unit(reply, self.put(&row)),
            Write::Purge { key, reply } => {
                let result = self
                    .conn
                    .prepare_cached("DELETE FROM ai_result_cache WHERE content_hash = ?1")
                    .and_then(|mut statement| statement.execute([key.to_hex()]))
                    .map(drop);
                Applied::Unit(reply, result)
            }
            Write::PurgeNamespace { namespace, reply } => {
                let result = self
                    .conn
                    .execute(
                        "DELETE FROM ai_result_cache WHERE model_version = ?1",
                        [namespace],
                    )
                    .map(|n| n as u64);
                Applied::Count(reply, result)
            }
            Write::Flush { reply } => Applied::Unit(reply, self.write_hits()),
        }
    }

    fn put(&mut self, row: &Row) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO ai_result_cache
                     (content_hash, result, created_at, expires_at, model_version, model, tokens, bytes)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (content_hash) DO UPDATE SET
                     result = excluded.result,
                     created_at = excluded.created_at,
                     expires_at = excluded.expires_at,
                     model_version = excluded.model_version,
                     model = excluded.model,
                     tokens = excluded.tokens,
                     bytes = excluded.bytes",
            )?
            .execute(params![
                row.key.to_hex(),
                row.result,
                row.created_at,
                row.expires_at,
                row.namespace,
                row.model,
                row.tokens,
                row.bytes,
            ])?;
        self.written.0 = self.written.0.saturating_add(row.bytes);
        self.written.1 += 1;
        Ok(())
    }

    /// Writes every hit counted so far, in a transaction of its own.
    fn flush_hits(&mut self) -> rusqlite::Result<()> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        let written = self.write_hits();
        let result = written.and_then(|()| self.conn.execute_batch("COMMIT"));
        if result.is_err() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        result
    }

    /// Writes every hit counted so far, inside the caller's transaction.
    fn write_hits(&mut self) -> rusqlite::Result<()> {
        let hits = mem::take(&mut *self.hits.lock().unwrap_or_else(PoisonError::into_inner));
        if hits.is_empty() {
            return Ok(());
        }
        let mut update = self.conn.prepare_cached(
            "UPDATE ai_result_cache
             SET hit_count = hit_count + ?1,
                 last_hit_at = MAX(COALESCE(last_hit_at, 0), ?2)
             WHERE content_hash = ?3",
        )?;
        for (key, (count, last)) in hits {
            update.execute(params![
                i64::try_from(count).unwrap_or(i64::MAX),
                millis(last),
                key.to_hex()
            ])?;
        }
        Ok(())
    }

    /// Deletes expired rows, then keeps the budget.
    fn sweep(&mut self) -> rusqlite::Result<()> {
        self.conn.execute(
            "DELETE FROM ai_result_cache WHERE expires_at <= ?1",
            [millis(now_millis())],
        )?;
        self.enforce_budget()
    }

    /// Whether what was written since the last exact check could have taken
    /// the file over its budget.
    fn may_be_over_budget(&self) -> bool {
        let bytes = self.settings.max_bytes;
        let rows = self.settings.max_rows;
        // Checked exactly every so often, and at once when one write alone
        // could be enough.
        (bytes.is_some() || rows.is_some())
            && (self.written.1 >= 64
                || bytes.is_some_and(|max| self.written.0 as u64 >= max / 16)
                || rows.is_some_and(|max| self.written.1 as u64 >= max / 16))
    }

    /// Evicts the least recently hit rows until the file is within its
    /// budget.
    fn enforce_budget(&mut self) -> rusqlite::Result<()> {
        self.written = (0, 0);
        if self.settings.max_bytes.is_none() && self.settings.max_rows.is_none() {
            return Ok(());
        }
        // Hits still counted in memory decide what is recent.
        self.flush_hits()?;
        loop {
            let (rows, bytes): (i64, i64) = self.conn.query_row(
                "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM ai_result_cache",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )?;
            let over_rows = self.settings.max_rows.map_or(0, |max| {
                rows.saturating_sub(i64::try_from(max).unwrap_or(i64::MAX))
            });
            let over_bytes = self
                .settings
                .max_bytes
                .is_some_and(|max| bytes as u64 > max);
            if over_rows <= 0 && !over_bytes {
                return Ok(());
            }
            let batch = if over_bytes {
                EVICT_BATCH.max(over_rows)
            } else {
                over_rows
            };
            let evicted = self.conn.execute(
                "DELETE FROM ai_result_cache WHERE content_hash IN (
                     SELECT content_hash FROM ai_result_cache
                     ORDER BY COALESCE(last_hit_at, created_at) LIMIT ?1)",
                [batch],
            )?;
            if evicted == 0 {
                return Ok(());
            }
        }
    }

    /// Logs a background job's failure once per burst.
    fn background(&mut self, result: rusqlite::Result<()>) {
        match result {
            Ok(()) if self.failing => {
                self.failing = false;
                tracing::info!("the sqlite store's background writes work again");
            }
            Ok(()) => {}
            Err(error) if !self.failing => {
                self.failing = true;
                tracing::warn!(%error, "the sqlite store's background write failed");
            }
            Err(_) => {}
        }
    }
}
