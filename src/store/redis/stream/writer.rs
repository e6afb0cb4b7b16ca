//! The leader's side: while it records a shareable answer, a task of its
//! own keeps the head and the chunks, and writes nothing until another
//! instance asks for the stream (see `want.rs`). Then it appends the head,
//! the chunks kept so far, and from then on the body in batches, then the
//! end, to the key's stream. A batch gathers the chunks that arrive within
//! [`stream_batch`](crate::store::redis::RedisStoreBuilder::stream_batch)
//! of its first one (or 64 KiB), so a token stream costs one append per
//! batch, not one per token.

use std::{sync::Arc, time::Duration};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use tokio::{
    sync::{mpsc, oneshot, Notify},
    time::{timeout_at, Instant},
};

use super::entry::{self, CHUNK, END, FAILED, HEAD, OFFSET, WRITER};
use crate::{
    key::Key,
    record::Record,
    store::redis::{
        keys::millis,
        lease::Lease,
        pubsub::Event,
        store::{Inner, RedisStore},
    },
};

/// The most body bytes a leader keeps for a stream nobody has asked for
/// yet. They are the recording's own chunks while the answer is recorded,
/// but an answer past the recording budget is not recorded, and these would
/// then be held outside it. Past this, the answer is not streamed: a waiter
/// elsewhere waits for the stored entry, as without streams.
const KEEP_BYTES: u64 = 1024 * 1024;

/// A batch is sent once it holds this many bytes, whatever the time.
const BATCH_BYTES: usize = 64 * 1024;
/// How long a stream outlives its end: followers still catching up read
/// the end; a new waiter finds the stored entry instead.
const GRACE: Duration = Duration::from_secs(2);

/// The leader's handle on its answer's stream. Dropped before
/// [`finish`](StreamWriter::finish), the stream ends as failed.
pub(crate) struct StreamWriter {
    ops: mpsc::UnboundedSender<Op>,
    written: oneshot::Receiver<()>,
    wait: Duration,
}

enum Op {
    Chunk(Bytes),
    End(Option<HeaderMap>),
}

impl StreamWriter {
    /// Appends body bytes (in the next batch).
    pub(crate) fn chunk(&self, chunk: &Bytes) {
        let _ = self.ops.send(Op::Chunk(chunk.clone()));
    }

    /// Appends the end of a complete body, and waits (within the write
    /// timeout) until it is in Redis.
    pub(crate) async fn finish(self, trailers: Option<&HeaderMap>) {
        let _ = self.ops.send(Op::End(trailers.cloned()));
        let _ = tokio::time::timeout(self.wait, self.written).await;
    }

    /// Ends the stream as failed: its followers' bodies end with an error.
    pub(crate) fn fail(self) {
        // Dropping the sender tells the task.
    }
}

impl RedisStore {
    /// Keeps an answer whose head is `head` (a record without a body), to
    /// stream it to `key`'s stream once another instance asks, capped at
    /// `limit` body bytes; `None` when streams are off (or `lease` is not
    /// held here any more).
    pub(crate) fn stream_writer(
        &self,
        ns: &str,
        key: &Key,
        head: &Record,
        limit: u64,
        lease: &Lease,
    ) -> Option<StreamWriter> {
        let inner = &self.inner;
        if !inner.settings.streams {
            return None;
        }
        let wanted = inner
            .leading
            .signal(&inner.names(ns, key).lease, &lease.token)?;
        let (ops, rx) = mpsc::unbounded_channel();
        let (written, written_rx) = oneshot::channel();
        let task = Task {
            inner: Arc::clone(inner),
            name: inner.stream_name(ns, key),
            key: *key,
            limit,
            writer: lease.token.clone(),
            expiry_set: None,
        };
        inner
            .runtime
            .spawn(task.run(entry::encode_head(head), rx, written, wanted));
        Some(StreamWriter {
            ops,
            written: written_rx,
            wait: inner.settings.write_timeout,
        })
    }
}

struct Task {
    inner: Arc<Inner>,
    name: String,
    key: Key,
    limit: u64,
    /// The leader's lease token, on every entry: should the lease pass to
    /// another leader while this one still writes, followers tell the two
    /// apart.
    writer: String,
    /// When the stream's expiry was last pushed back.
    expiry_set: Option<Instant>,
}

impl Task {
    async fn run(
        mut self,
        head: Vec<u8>,
        mut ops: mpsc::UnboundedReceiver<Op>,
        written: oneshot::Sender<()>,
        wanted: Arc<Notify>,
    ) {
        // Nothing reaches Redis until another instance asks: the chunks are
        // kept meanwhile (refcounted: the flight records the same bytes).
        let keep = self.limit.min(KEEP_BYTES);
        let Some(kept) = keep_until_wanted(&mut ops, &wanted, keep).await else {
            // Ended, failed or grew too large before anyone asked.
            let _ = written.send(());
            return;
        };
        let batch_time = self.inner.settings.stream_batch;
        // An answer complete within the first batch is not streamed at all:
        // its waiters find the stored entry a moment later.
        let first = gather(&mut ops, None, batch_time).await;
        if first.end.is_some() || first.gone {
            let _ = written.send(());
            return;
        }
        let kept_len: usize = kept.iter().map(Bytes::len).sum();
        let mut sent = kept_len as u64 + first.body.len() as u64;
        // Chunks queued when the ask came count too: past what may be kept,
        // the answer is not streamed.
        if sent > keep {
            return;
        }
        // The head, then what was kept, at once, in entries of at most
        // 64 KiB.
        let mut prefix = BytesMut::with_capacity(kept_len + first.body.len());
        kept.iter()
            .for_each(|chunk| prefix.extend_from_slice(chunk));
        prefix.extend_from_slice(&first.body);
        let mut prefix = prefix.freeze();
        let mut entries = vec![(HEAD, Bytes::from(head), None)];
        // Where the next chunk starts in the body: on every chunk, and the
        // total on the end, so followers can tell a stream that lost
        // entries.
        let mut offset = 0u64;
        while !prefix.is_empty() {
            let piece = prefix.split_to(prefix.len().min(BATCH_BYTES));
            let at = offset;
            offset += piece.len() as u64;
            entries.push((CHUNK, piece, Some(at)));
        }
        // A failed append stops the stream here: its followers see no end,
        // and fail when the lease goes or on their idle deadline.
        if !self.append(&entries, None).await {
            return;
        }
        // Waiters look again, and find the stream to follow.
        let _ = self
            .inner
            .publish(Event::Done(self.key), Some(&self.name))
            .await;
        loop {
            let Some(op) = ops.recv().await else {
                self.append(&[(FAILED, Bytes::from_static(b"gone"), None)], Some(GRACE))
                    .await;
                return;
            };
            let batch = gather(&mut ops, Some(op), batch_time).await;
            sent += batch.body.len() as u64;
            let mut entries = Vec::with_capacity(2);
            let too_large = sent > self.limit;
            if too_large {
                entries.push((FAILED, Bytes::from_static(entry::TOO_LARGE), None));
            } else {
                if !batch.body.is_empty() {
                    let at = offset;
                    offset += batch.body.len() as u64;
                    entries.push((CHUNK, batch.body.freeze(), Some(at)));
                }
                match (&batch.end, batch.gone) {
                    (Some(trailers), _) => {
                        let end = Bytes::from(entry::encode_end(trailers.as_ref()));
                        entries.push((END, end, Some(offset)));
                    }
                    (None, true) => entries.push((FAILED, Bytes::from_static(b"gone"), None)),
                    (None, false) => {}
                }
            }
            let last = too_large || batch.end.is_some() || batch.gone;
            let healthy = self.append(&entries, last.then_some(GRACE)).await;
            if batch.end.is_some() {
                let _ = written.send(());
                return;
            }
            if last || !healthy {
                return;
            }
        }
    }

    /// Appends `entries` (field, value, and where in the body a chunk
    /// starts or an end's total) in one round trip, with the stream's expiry:
    /// `expire` when given (the end), else the stream TTL, pushed back only
    /// once a quarter of it has passed. Returns whether it worked.
    async fn append(
        &mut self,
        entries: &[(&str, Bytes, Option<u64>)],
        expire: Option<Duration>,
    ) -> bool {
        let ttl = self.inner.settings.stream_ttl;
        let now = Instant::now();
        let expire = expire.or_else(|| {
            let due = self
                .expiry_set
                .is_none_or(|set| now.duration_since(set) >= ttl / 4);
            due.then_some(ttl)
        });
        let inner = &self.inner;
        let mut pipe = redis::pipe();
        if self.expiry_set.is_none() {
            // A new leader starts a new stream: what an earlier one left is
            // not this answer.
            pipe.cmd("DEL").arg(&self.name).ignore();
        }
        for (field, value, offset) in entries {
            let xadd = pipe
                .cmd("XADD")
                .arg(&self.name)
                .arg("*")
                .arg(*field)
                .arg(value.as_ref())
                .arg(WRITER)
                .arg(&self.writer);
            if let Some(offset) = offset {
                xadd.arg(OFFSET).arg(offset.to_string());
            }
            xadd.ignore();
        }
        if let Some(expire) = expire {
            pipe.cmd("PEXPIRE")
                .arg(&self.name)
                .arg(millis(expire))
                .ignore();
        }
        let appended = inner
            .run(
                Some(&self.name),
                inner.settings.write_timeout,
                pipe.query_async::<()>(&mut inner.conn.clone()),
            )
            .await
            .is_ok();
        if appended && expire.is_some() {
            self.expiry_set = Some(now);
        }
        appended
    }
}

/// Keeps the chunks that arrive until `wanted` fires: `None` when the
/// answer ends, fails, or grows past `limit` first (then no one is ever
/// streamed it). A want already waiting is taken before any chunk.
async fn keep_until_wanted(
    ops: &mut mpsc::UnboundedReceiver<Op>,
    wanted: &Notify,
    limit: u64,
) -> Option<Vec<Bytes>> {
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut size = 0u64;
    loop {
        tokio::select! {
            biased;
            () = wanted.notified() => break,
            op = ops.recv() => keep(op?, &mut chunks, &mut size, limit)?,
        }
    }
    // What was already queued when the ask came is kept too, within the
    // same limit.
    while let Ok(op) = ops.try_recv() {
        keep(op, &mut chunks, &mut size, limit)?;
    }
    Some(chunks)
}

/// Keeps `op`'s chunk in `chunks`; `None` at the end, or past `limit`.
fn keep(op: Op, chunks: &mut Vec<Bytes>, size: &mut u64, limit: u64) -> Option<()> {
    let Op::Chunk(chunk) = op else { return None };
    *size += chunk.len() as u64;
    if *size > limit {
        return None;
    }
    chunks.push(chunk);
    Some(())
}

/// What arrived within one batch.
struct Batch {
    body: BytesMut,
    /// The end, with the trailers, if it arrived.
    end: Option<Option<HeaderMap>>,
    /// The leader dropped its handle without an end.
    gone: bool,
}

/// Gathers ops for `time` after `first` (or from now, without one), until
/// the end, 64 KiB, or the leader going away.
async fn gather(ops: &mut mpsc::UnboundedReceiver<Op>, first: Option<Op>, time: Duration) -> Batch {
    let mut batch = Batch {
        body: BytesMut::new(),
        end: None,
        gone: false,
    };
    let due = Instant::now() + time;
    let mut next = first;
    loop {
        match next.take() {
            Some(Op::Chunk(chunk)) => batch.body.extend_from_slice(&chunk),
            Some(Op::End(trailers)) => {
                batch.end = Some(trailers);
                return batch;
            }
            None => {}
        }
        if batch.body.len() >= BATCH_BYTES {
            return batch;
        }
        match timeout_at(due, ops.recv()).await {
            Ok(Some(op)) => next = Some(op),
            Ok(None) => {
                batch.gone = true;
                return batch;
            }
            Err(_) => return batch,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_batch_gathers_chunks_until_its_time_the_end_or_the_leader_going() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        tx.send(Op::Chunk(Bytes::from("a"))).unwrap();
        tx.send(Op::Chunk(Bytes::from("b"))).unwrap();
        let first = rx.recv().await;
        let batch = gather(&mut rx, first, Duration::from_millis(10)).await;
        assert_eq!(&batch.body[..], b"ab");
        assert!(batch.end.is_none() && !batch.gone, "cut by time");

        tx.send(Op::Chunk(Bytes::from("c"))).unwrap();
        tx.send(Op::End(None)).unwrap();
        tx.send(Op::Chunk(Bytes::from("never"))).unwrap();
        let batch = gather(&mut rx, None, Duration::from_secs(60)).await;
        assert_eq!(&batch.body[..], b"c");
        assert!(matches!(batch.end, Some(None)), "cut by the end");

        drop(tx);
        rx.recv().await;
        let batch = gather(&mut rx, None, Duration::from_secs(60)).await;
        assert!(batch.gone, "cut by the leader going");
    }

    #[tokio::test(start_paused = true)]
    async fn chunks_are_kept_until_wanted_and_never_past_the_limit_or_the_end() {
        let (tx, rx) = mpsc::unbounded_channel();
        let wanted = Arc::new(Notify::new());
        let keeping = tokio::spawn({
            let wanted = Arc::clone(&wanted);
            let mut rx = rx;
            async move {
                let kept = keep_until_wanted(&mut rx, &wanted, 4).await;
                (rx, kept)
            }
        });
        tx.send(Op::Chunk(Bytes::from("ab"))).unwrap();
        tx.send(Op::Chunk(Bytes::from("c"))).unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!keeping.is_finished(), "not wanted yet: kept, not written");
        wanted.notify_one();
        let (mut rx, kept) = keeping.await.unwrap();
        assert_eq!(kept.unwrap(), [Bytes::from("ab"), Bytes::from("c")]);

        // Past the limit, nobody is streamed it.
        let none = Notify::new();
        tx.send(Op::Chunk(Bytes::from("abc"))).unwrap();
        tx.send(Op::Chunk(Bytes::from("de"))).unwrap();
        assert!(keep_until_wanted(&mut rx, &none, 4).await.is_none());
        // Ended or failed first: nothing to stream either.
        tx.send(Op::End(None)).unwrap();
        assert!(keep_until_wanted(&mut rx, &none, 4).await.is_none());
        drop(tx);
        assert!(keep_until_wanted(&mut rx, &none, 4).await.is_none());
    }
}
