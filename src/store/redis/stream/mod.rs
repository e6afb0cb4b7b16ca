//! Live streams across instances: a leader appends its response to a Redis
//! Stream while it records it, and waiters on other instances forward it to
//! their callers as it arrives, instead of waiting for the stored entry.
//!
//! The stream of a key is `tidem:<ns>:{<key>}:stream`, in the slot of the
//! entry and its lease. Its entries, each one field (besides `w` and `o`,
//! below):
//!
//! | field | value |
//! |---|---|
//! | `h` | the head: status, version, shareable headers and metadata (the `Vary` digest, the `Idempotency-Key` fingerprint), in the record's binary form with an empty body |
//! | `c` | body bytes: the chunks that arrived within one batch, concatenated; `o`: where they start in the body |
//! | `e` | the end of a complete body: its trailers, in the record's binary form; `o`: the body's whole length |
//! | `f` | the end of a failed body (upstream error, idle, too large): a reason; `too large` is the leader's caller served whole, only not shared, not the leader's failure |
//!
//! A leader writes nothing at first: its writer keeps the head and the
//! chunks (refcounted, within the response limit) until some instance asks
//! for the stream. A waiter that finds the lease held and no stream asks,
//! with a `Want` on the events channel naming the key (at most once a
//! second per key and store); the instance holding the lease then appends
//! the head, what it kept (in entries of at most 64 KiB), and from then on
//! its batches as they come, and wakes the waiters, which follow. An answer
//! nobody on another instance waits for costs Redis nothing more.
//!
//! Every entry also carries `w`: the lease token of the leader that wrote
//! it. A leader starts its stream afresh (`DEL`, then its head); should its
//! lease pass to another leader while it still appends (Redis paused past
//! the lease), followers skip the entries that are not their leader's, and
//! fail when they find the lease held by another.
//!
//! Chunks and ends also carry `o` (decimal): where a chunk starts in the
//! body, and an end's total. A follower checks that its leader's chunks
//! follow one another exactly and that the end counts them all: a stream
//! that lost entries (another leader's `DEL` between two reads, an entry
//! deleted or trimmed), or entries without `o`, fail the follower ("the
//! stream has a gap", a Redis-side failure, not the leader's: its relay
//! may go through). A leader whose lease renewal finds the lease taken
//! forgets it, and starts no stream on a later want.
//!
//! On by default ([`streams`](crate::store::redis::RedisStoreBuilder::streams)).
//!
//! A stream is only written for an answer that may be shared and stored:
//! a `private` or oversized answer never reaches Redis, and its waiters are
//! told to go through at once (the events channel's `Unstored`). Its bytes
//! are capped by the response limit, and it expires
//! [`stream_ttl`](crate::store::redis::RedisStoreBuilder::stream_ttl) after its
//! last append; once its end is appended it lives only a short grace more,
//! for followers still catching up.
//!
//! | file | owns |
//! |---|---|
//! | `entry.rs` | the entries: encoding, and decoding defensively |
//! | `writer.rs` | the leader's side: a task per streamed answer, batching appends |
//! | `reader.rs` | the followers' side: one reader per store for every followed stream |
//! | `want.rs` | asking for a stream, and the leases a want may start one for |

mod entry;
mod reader;
mod want;
mod writer;

pub(crate) use self::{
    entry::StreamEntry,
    reader::{Follow, Readers},
    want::Leading,
    writer::StreamWriter,
};

pub(super) use self::reader::read_streams;

use super::store::Inner;
use crate::key::Key;

impl Inner {
    /// The name of `key`'s stream, beside its entry and lease.
    pub(super) fn stream_name(&self, ns: &str, key: &Key) -> String {
        format!("{}:stream", self.names(ns, key).entry)
    }
}
