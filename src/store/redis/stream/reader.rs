//! The followers' side: a waiter that finds the lease held by a leader
//! that streams registers a [`Follow`] (one that finds no stream asks for
//! it, see `want.rs`); one task per store reads every
//! followed stream through one blocking connection (`XREAD BLOCK` over all
//! of them at once on a single node) and hands each follower its entries.
//!
//! A follower's stream fails, and never passes for complete, when Redis
//! fails or stops answering, when the stream disappears, or when the lease
//! is gone without an end in the stream (the leader's process died, or it
//! lost Redis). The last is told apart when this store has seen Redis fail
//! within a lease's time: then the lease may have gone with Redis (a pause
//! past it, a restart) while the leader lives, and the failure is Redis's,
//! not the leader's.

use std::{
    collections::HashMap,
    sync::{atomic::Ordering::Relaxed, Arc, Mutex, MutexGuard, PoisonError, Weak},
    time::{Duration, Instant},
};

use bytes::Bytes;
use redis::{aio::MultiplexedConnection, Value};
use tokio::sync::{mpsc, Notify};

use super::{
    entry::{self, StreamEntry},
    want::Asks,
};
use crate::{
    key::Key,
    record::Record,
    store::redis::{
        connection::Conn,
        pubsub::Event,
        store::{Inner, RedisStore},
    },
};

/// How long one `XREAD` blocks: also how soon a stream registered while it
/// blocks is read for the first time.
const BLOCK: Duration = Duration::from_millis(50);
/// On a cluster (no blocking read across slots), the pause between rounds
/// that found nothing.
const CLUSTER_PAUSE: Duration = Duration::from_millis(10);
/// A stream quiet this long has its lease checked.
const QUIET: Duration = Duration::from_millis(250);

/// The streams this store's followers read, by stream name.
#[derive(Default)]
pub(crate) struct Readers {
    followed: Mutex<HashMap<String, Followed>>,
    changed: Notify,
    /// When this store last asked for each stream.
    asks: Asks,
    /// When this store last saw Redis fail.
    trouble: Mutex<Trouble>,
}

/// The store's failed and skipped operations last counted, and when they
/// last grew (or a read of the streams failed).
#[derive(Default)]
struct Trouble {
    counted: u64,
    at: Option<Instant>,
}

struct Followed {
    lease: String,
    /// The lease token of the leader whose answer this is: entries of
    /// another are skipped, and the lease held by another is the leader gone.
    writer: Bytes,
    /// The id of the last entry handed over.
    last: String,
    /// The body bytes handed over: where the leader's next chunk must
    /// start, and its end's total.
    expected: u64,
    entries: mpsc::UnboundedSender<StreamEntry>,
    quiet_since: Instant,
    /// The lease was found gone: one more read without an end fails it.
    orphaned: bool,
}

/// Why a follower fails when its leader's entries are not contiguous: not
/// the leader's failure, Redis's (or another leader's) doing.
pub(super) const GAP: &str = "the stream has a gap";

impl Followed {
    /// `entry` (read from `raw`, the followed leader's) if it continues
    /// the body exactly where the last chunk ended: a chunk must start
    /// there, an end must count all the bytes handed over. A chunk or an
    /// end without its offset (an older writer), or with another, fails
    /// the stream: entries were lost, and what follows would pass a body
    /// with a hole for complete.
    fn contiguous(&mut self, raw: &entry::Raw, entry: StreamEntry) -> StreamEntry {
        match entry {
            StreamEntry::Chunk(chunk) if raw.offset == Some(self.expected) => {
                self.expected += chunk.len() as u64;
                StreamEntry::Chunk(chunk)
            }
            StreamEntry::End(trailers) if raw.offset == Some(self.expected) => {
                StreamEntry::End(trailers)
            }
            StreamEntry::Chunk(_) | StreamEntry::End(_) => StreamEntry::Failed(GAP),
            failed @ (StreamEntry::LeaderFailed | StreamEntry::Failed(_)) => failed,
        }
    }
}

impl Readers {
    fn map(&self) -> MutexGuard<'_, HashMap<String, Followed>> {
        self.followed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Redis failed for this store now.
    fn troubled(&self) {
        self.trouble
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .at = Some(Instant::now());
    }

    /// Whether this store saw Redis fail within `window`, counting its
    /// failed and skipped operations so far, `counted`.
    fn troubled_within(&self, counted: u64, window: Duration) -> bool {
        let mut trouble = self.trouble.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if counted != trouble.counted {
            trouble.counted = counted;
            trouble.at = Some(now);
        }
        trouble
            .at
            .is_some_and(|at| now.saturating_duration_since(at) < window)
    }

    /// Fails every stream followed (Redis failed), and forgets them.
    fn fail_all(&self, why: &'static str) {
        for (_, followed) in self.map().drain() {
            let _ = followed.entries.send(StreamEntry::Failed(why));
        }
    }

    /// Fails the streams named (their node failed), and forgets them.
    fn fail(&self, names: &[String], why: &'static str) {
        let mut map = self.map();
        for name in names {
            if let Some(followed) = map.remove(name) {
                let _ = followed.entries.send(StreamEntry::Failed(why));
            }
        }
    }
}

/// A remote leader's answer, followed: its head, then its entries as they
/// arrive. Dropping it stops reading the stream.
pub(crate) struct Follow {
    pub(crate) head: Arc<Record>,
    pub(crate) entries: mpsc::UnboundedReceiver<StreamEntry>,
    _registration: Registration,
}

struct Registration {
    readers: Weak<Readers>,
    name: String,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(readers) = self.readers.upgrade() {
            readers.map().remove(&self.name);
        }
    }
}

impl RedisStore {
    /// Follows `key`'s stream if the leader holding its lease streams an
    /// answer that has not failed; `None` (wait as before) otherwise, or
    /// when this store already follows it. A leader that does not stream
    /// yet is asked to (at most once a second per key and store): the
    /// waiter is woken when its stream starts.
    pub(crate) async fn follow(&self, ns: &str, key: &Key) -> Option<Follow> {
        let inner = &self.inner;
        if !inner.settings.streams {
            return None;
        }
        let name = inner.stream_name(ns, key);
        if inner.readers.map().contains_key(&name) {
            return None;
        }
        // The lease's holder, the stream's first entry (the head) and its
        // last (a failure already?).
        let lease = inner.names(ns, key).lease;
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(&lease);
        pipe.cmd("XRANGE")
            .arg(&name)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1);
        pipe.cmd("XREVRANGE")
            .arg(&name)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1);
        let (holder, first, last): (Option<Vec<u8>>, Value, Value) = inner
            .run(
                Some(&name),
                inner.settings.timeout,
                pipe.query_async(&mut inner.conn.clone()),
            )
            .await
            .ok()?;
        // The head must be the lease holder's: a stream left by a leader
        // that lost its lease is not followed.
        let writer = Bytes::from(holder?);
        let first = entry::entries(&first)
            .into_iter()
            .next()
            .filter(|first| first.written_by(&writer));
        let Some(first) = first else {
            // The leader keeps its answer to itself until someone asks.
            if inner.readers.asks.may_ask(&name, Instant::now()) {
                let want = Event::Want(ns.to_owned(), *key);
                let _ = inner.publish(want, Some(&name)).await;
            }
            return None;
        };
        let failed = entry::entries(&last)
            .first()
            .is_some_and(|last| last.written_by(&writer) && last.is_failure());
        if failed {
            return None;
        }
        let head = first.head()?;
        let (tx, rx) = mpsc::unbounded_channel();
        {
            let mut map = inner.readers.map();
            if map.contains_key(&name) {
                return None;
            }
            map.insert(
                name.clone(),
                Followed {
                    lease,
                    writer,
                    last: first.id,
                    expected: 0,
                    entries: tx,
                    quiet_since: Instant::now(),
                    orphaned: false,
                },
            );
        }
        inner.readers.changed.notify_one();
        Some(Follow {
            head: Arc::new(head),
            entries: rx,
            _registration: Registration {
                readers: Arc::downgrade(&inner.readers),
                name,
            },
        })
    }
}

/// Runs for the life of the store: reads the followed streams. `client` is
/// the single node's, for a connection of its own that may block; on a
/// cluster the reads go through the cluster connection without blocking.
pub(in crate::store::redis) async fn read_streams(
    inner: Weak<Inner>,
    readers: Arc<Readers>,
    client: Option<redis::Client>,
) {
    let mut blocking: Option<MultiplexedConnection> = None;
    let mut backoff = Duration::from_millis(50);
    loop {
        // Sleep while nobody follows anything, without a connection: one
        // kept idle would hold a Redis client (and its driver task) for as
        // long as the store lives.
        let changed = readers.changed.notified();
        if readers.map().is_empty() {
            blocking = None;
            changed.await;
            continue;
        }
        drop(changed);
        let Some(store) = inner.upgrade() else { return };
        let (names, ids): (Vec<String>, Vec<String>) = readers
            .map()
            .iter()
            .map(|(name, followed)| (name.clone(), followed.last.clone()))
            .unzip();
        let deadline = BLOCK + store.settings.write_timeout;
        let read = match (&client, &store.conn) {
            (Some(client), _) => {
                if blocking.is_none() {
                    let connect = client.get_multiplexed_async_connection();
                    match tokio::time::timeout(store.settings.connect_timeout, connect).await {
                        Ok(Ok(conn)) => blocking = Some(conn),
                        _ => {
                            readers.troubled();
                            readers.fail_all("redis is unreachable");
                            drop(store);
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_secs(2));
                            continue;
                        }
                    }
                }
                let conn = blocking.as_mut().expect("connected above");
                let mut xread = redis::cmd("XREAD");
                xread
                    .arg("COUNT")
                    .arg(256)
                    .arg("BLOCK")
                    .arg(BLOCK.as_millis() as u64);
                xread.arg("STREAMS").arg(&names).arg(&ids);
                match tokio::time::timeout(deadline, xread.query_async::<Value>(conn)).await {
                    Ok(Ok(value)) => Ok((entry::streams(&value), Vec::new())),
                    _ => Err(()),
                }
            }
            (None, Conn::Cluster(cluster)) => {
                // One read per stream: a cluster refuses keys of several
                // slots in one command.
                let mut reads = tokio::task::JoinSet::new();
                for (name, id) in names.iter().zip(&ids) {
                    let mut cluster = cluster.clone();
                    let mut xread = redis::cmd("XREAD");
                    xread.arg("COUNT").arg(256).arg("STREAMS").arg(name).arg(id);
                    let name = name.clone();
                    reads.spawn(async move {
                        let read = xread.query_async::<Value>(&mut cluster);
                        match tokio::time::timeout(deadline, read).await {
                            Ok(Ok(value)) => Ok(entry::streams(&value)),
                            _ => Err(name),
                        }
                    });
                }
                // A failing node fails only the streams it holds.
                let (mut found, mut failed) = (Vec::new(), Vec::new());
                while let Some(read) = reads.join_next().await {
                    match read {
                        Ok(Ok(streams)) => found.extend(streams),
                        Ok(Err(name)) => failed.push(name),
                        Err(_) => {}
                    }
                }
                Ok((found, failed))
            }
            (None, Conn::Single(_)) => Err(()),
        };
        let Ok((found, failed)) = read else {
            // Redis failed or stopped answering mid-stream: nobody's body
            // may pass for complete.
            blocking = None;
            readers.troubled();
            readers.fail_all("redis failed while following the stream");
            drop(store);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
            continue;
        };
        backoff = Duration::from_millis(50);
        if !failed.is_empty() {
            readers.troubled();
        }
        readers.fail(&failed, "redis failed while following the stream");
        let got_any = !found.is_empty();
        deliver(&readers, found);
        check_leases(&store, &readers).await;
        drop(store);
        if client.is_none() && !got_any {
            tokio::time::sleep(CLUSTER_PAUSE).await;
        }
    }
}

/// Hands each follower its new entries; a stream that ended is forgotten.
fn deliver(readers: &Readers, found: Vec<(String, Vec<entry::Raw>)>) {
    let mut map = readers.map();
    let now = Instant::now();
    for (name, raws) in found {
        let Some(followed) = map.get_mut(&name) else {
            continue;
        };
        let mut ended = false;
        for raw in raws {
            followed.last = raw.id.clone();
            // Another leader's, after this one lost the lease.
            if !raw.written_by(&followed.writer) {
                continue;
            }
            followed.quiet_since = now;
            followed.orphaned = false;
            let Some(entry) = raw.entry() else { continue };
            let entry = followed.contiguous(&raw, entry);
            ended = !matches!(entry, StreamEntry::Chunk(_));
            let _ = followed.entries.send(entry);
            if ended {
                break;
            }
        }
        if ended {
            map.remove(&name);
        }
    }
}

/// Streams quiet for a while: is their lease still held, and the stream
/// still there? A lease gone without an end read since fails the stream.
async fn check_leases(store: &Inner, readers: &Readers) {
    let now = Instant::now();
    let counted = store.errors.load(Relaxed) + store.skipped.load(Relaxed);
    // Redis failed here lately: a lease gone may have gone with it.
    let troubled = readers.troubled_within(counted, store.settings.lease);
    let quiet: Vec<(String, String, Bytes)> = readers
        .map()
        .iter()
        .filter(|(_, followed)| now.duration_since(followed.quiet_since) >= QUIET)
        .map(|(name, followed)| {
            let writer = followed.writer.clone();
            (name.clone(), followed.lease.clone(), writer)
        })
        .collect();
    for (name, lease, writer) in quiet {
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(&lease).cmd("EXISTS").arg(&name);
        let found: Result<(Option<Vec<u8>>, u8), _> = store
            .run(
                Some(&name),
                store.settings.timeout,
                pipe.query_async(&mut store.conn.clone()),
            )
            .await;
        let mut map = readers.map();
        let Some(followed) = map.get_mut(&name) else {
            continue;
        };
        followed.quiet_since = now;
        match found {
            // The stream expired or was deleted under us.
            Ok((_, 0)) => {
                let _ = followed
                    .entries
                    .send(StreamEntry::Failed("the stream went away"));
                map.remove(&name);
            }
            Ok((holder, _)) if holder.as_deref() == Some(&writer[..]) => followed.orphaned = false,
            // The leader is gone (or lost its lease), and the read since
            // found no end.
            Ok(_) if followed.orphaned => {
                let why = if troubled {
                    "the lease went while redis was failing"
                } else {
                    "the leader went away mid-stream"
                };
                let _ = followed.entries.send(StreamEntry::Failed(why));
                map.remove(&name);
            }
            Ok(_) => followed.orphaned = true,
            // A failed check proves nothing; the reads will tell.
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A follower of `writer`'s stream `s`, and what it receives.
    fn following(readers: &Readers, writer: &str) -> mpsc::UnboundedReceiver<StreamEntry> {
        let (tx, rx) = mpsc::unbounded_channel();
        readers.map().insert(
            "s".to_owned(),
            Followed {
                lease: "l".to_owned(),
                writer: Bytes::from(writer.to_owned()),
                last: "0-1".to_owned(),
                expected: 0,
                entries: tx,
                quiet_since: Instant::now(),
                orphaned: false,
            },
        );
        rx
    }

    fn raw(id: u64, field: &str, value: &[u8], writer: &str, offset: Option<u64>) -> entry::Raw {
        entry::Raw {
            id: format!("1-{id}"),
            field: field.as_bytes().to_vec(),
            value: Bytes::copy_from_slice(value),
            writer: Some(Bytes::from(writer.to_owned())),
            offset,
        }
    }

    fn end() -> Vec<u8> {
        entry::encode_end(None)
    }

    /// What the follower received, as text: `c:<bytes>`, `e`, `f:<why>`.
    fn received(rx: &mut mpsc::UnboundedReceiver<StreamEntry>) -> Vec<String> {
        let mut got = Vec::new();
        while let Ok(entry) = rx.try_recv() {
            got.push(match entry {
                StreamEntry::Chunk(chunk) => format!("c:{}", String::from_utf8_lossy(&chunk)),
                StreamEntry::End(_) => "e".to_owned(),
                StreamEntry::LeaderFailed => "f:leader".to_owned(),
                StreamEntry::Failed(why) => format!("f:{why}"),
            });
        }
        got
    }

    #[test]
    fn contiguous_chunks_and_an_end_counting_them_all_pass() {
        let readers = Readers::default();
        let mut rx = following(&readers, "tA");
        let found = vec![(
            "s".to_owned(),
            vec![
                raw(2, "c", b"abc", "tA", Some(0)),
                // Another leader's entries are skipped, offsets and all.
                raw(3, "c", b"zzzz", "tB", Some(0)),
                raw(4, "c", b"de", "tA", Some(3)),
            ],
        )];
        deliver(&readers, found);
        deliver(
            &readers,
            vec![("s".to_owned(), vec![raw(5, "e", &end(), "tA", Some(5))])],
        );
        assert_eq!(received(&mut rx), ["c:abc", "c:de", "e"]);
        assert!(readers.map().is_empty(), "an ended stream is forgotten");
    }

    #[test]
    fn a_chunk_lost_from_the_stream_fails_the_follower_never_ends_it_complete() {
        let readers = Readers::default();
        let mut rx = following(&readers, "tA");
        // The chunk at 3..5 is gone (deleted by another leader's `DEL`, or
        // trimmed): the next one, and the end after it, must not pass.
        let found = vec![(
            "s".to_owned(),
            vec![
                raw(2, "c", b"abc", "tA", Some(0)),
                raw(4, "c", b"fg", "tA", Some(5)),
                raw(5, "e", &end(), "tA", Some(7)),
            ],
        )];
        deliver(&readers, found);
        assert_eq!(received(&mut rx), ["c:abc", format!("f:{GAP}").as_str()]);
        assert!(readers.map().is_empty(), "a failed stream is forgotten");

        // The beginning lost: the first chunk read must start at 0.
        let mut rx = following(&readers, "tA");
        let found = vec![(
            "s".to_owned(),
            vec![
                raw(4, "c", b"fg", "tA", Some(5)),
                raw(5, "e", &end(), "tA", Some(7)),
            ],
        )];
        deliver(&readers, found);
        assert_eq!(received(&mut rx), [format!("f:{GAP}")]);
    }

    #[test]
    fn an_end_with_another_total_fails_the_follower() {
        for total in [Some(2), Some(4), None] {
            let readers = Readers::default();
            let mut rx = following(&readers, "tA");
            let found = vec![(
                "s".to_owned(),
                vec![
                    raw(2, "c", b"abc", "tA", Some(0)),
                    raw(3, "e", &end(), "tA", total),
                ],
            )];
            deliver(&readers, found);
            assert_eq!(
                received(&mut rx),
                ["c:abc", format!("f:{GAP}").as_str()],
                "{total:?}"
            );
        }
    }

    #[test]
    fn entries_without_offsets_are_a_gap() {
        let readers = Readers::default();
        let mut rx = following(&readers, "tA");
        let found = vec![(
            "s".to_owned(),
            vec![
                raw(2, "c", b"abc", "tA", None),
                raw(3, "e", &end(), "tA", Some(3)),
            ],
        )];
        deliver(&readers, found);
        assert_eq!(received(&mut rx), [format!("f:{GAP}")]);
        assert!(readers.map().is_empty());

        // A failure needs no offset: it passes as it is.
        let mut rx = following(&readers, "tA");
        let found = vec![("s".to_owned(), vec![raw(2, "f", b"gone", "tA", None)])];
        deliver(&readers, found);
        assert_eq!(received(&mut rx), ["f:leader"]);
    }
}
