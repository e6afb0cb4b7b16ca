//! The leader's side: while it records a shareable answer, a task of its
//! own appends the head, then the body in batches, then the end, to the
//! key's stream. A batch gathers the chunks that arrive within
//! [`stream_batch`](crate::store::redis::RedisStoreBuilder::stream_batch)
//! of its first one (or 64 KiB), so a token stream costs one append per
//! batch, not one per token.

use std::{sync::Arc, time::Duration};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use tokio::{
    sync::{mpsc, oneshot},
    time::{timeout_at, Instant},
};

use super::entry::{self, CHUNK, END, FAILED, HEAD, WRITER};
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
    /// Starts streaming an answer whose head is `head` (a record without a
    /// body) to `key`'s stream, capped at `limit` body bytes; `None` when
    /// streams are off.
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
            .spawn(task.run(entry::encode_head(head), rx, written));
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
    ) {
        let batch_time = self.inner.settings.stream_batch;
        // An answer complete within the first batch is not streamed at all:
        // its waiters find the stored entry a moment later.
        let first = gather(&mut ops, None, batch_time).await;
        if first.end.is_some() || first.gone {
            let _ = written.send(());
            return;
        }
        let mut entries = vec![(HEAD, head)];
        if !first.body.is_empty() {
            entries.push((CHUNK, first.body.to_vec()));
        }
        let mut sent = first.body.len() as u64;
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
                self.append(&[(FAILED, b"gone".to_vec())], Some(GRACE))
                    .await;
                return;
            };
            let batch = gather(&mut ops, Some(op), batch_time).await;
            sent += batch.body.len() as u64;
            let mut entries = Vec::with_capacity(2);
            let too_large = sent > self.limit;
            if too_large {
                entries.push((FAILED, b"too large".to_vec()));
            } else {
                if !batch.body.is_empty() {
                    entries.push((CHUNK, batch.body.to_vec()));
                }
                match (&batch.end, batch.gone) {
                    (Some(trailers), _) => {
                        entries.push((END, entry::encode_end(trailers.as_ref())));
                    }
                    (None, true) => entries.push((FAILED, b"gone".to_vec())),
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

    /// Appends `entries` in one round trip, with the stream's expiry:
    /// `expire` when given (the end), else the stream TTL, pushed back only
    /// once a quarter of it has passed. Returns whether it worked.
    async fn append(&mut self, entries: &[(&str, Vec<u8>)], expire: Option<Duration>) -> bool {
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
        for (field, value) in entries {
            pipe.cmd("XADD")
                .arg(&self.name)
                .arg("*")
                .arg(*field)
                .arg(value.as_slice())
                .arg(WRITER)
                .arg(&self.writer)
                .ignore();
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
}
