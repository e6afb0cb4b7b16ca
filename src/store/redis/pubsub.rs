//! The events channel: one pub/sub subscriber per store wakes local waiters
//! when another instance completes a call, lets them through at once when
//! its answer will not be stored, and turns purges and refreshes made
//! anywhere into [`Invalidation`]s for the L1 caches on this store.
//!
//! Analytics reads also ask every instance to flush its counters here, and
//! are answered here ([`Event::Flush`], [`Event::Flushed`]). Waiters ask
//! here for the stream of an answer another instance records
//! ([`Event::Want`]).
//!
//! A classic `PUBLISH` reaches every node of a cluster, so the subscription
//! may go through any node: it uses the first node that answers (the seeds
//! given, then the nodes found at connect), and moves to the next when its
//! node goes away or stops answering its pings. Messages sent while it moves
//! are lost, and so are those sent before the first subscription, while the
//! store already serves (its first subscription may take retries): so on
//! every subscription, the first included, the waiters look again and every
//! L1 is told to drop everything ([`Invalidation::Missed`]).

use std::{
    future::poll_fn,
    pin::Pin,
    sync::{Arc, Weak},
    time::Duration,
};

use futures_core::Stream;

use super::{connection::Conn, counters::flush_on_request, error::StoreError, store::Inner};
use crate::{key::Key, store::invalidation::Invalidation};

/// What travels on the events channel.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Event {
    /// A call for this key completed and its answer is stored: waiters
    /// look again.
    Done(Key),
    /// A call for this key ended without storing an answer (an error, an
    /// answer not to be stored): waiters go through themselves.
    Unstored(Key),
    /// The entry was stored over an older one (a refresh) by the instance
    /// named: every other instance evicts it from L1, waiters look again.
    Replaced(Key, String),
    /// This entry was purged: evict it from L1.
    Purged(Key),
    /// This namespace was purged: evict L1 whole.
    PurgedNamespace,
    /// An analytics read (named by this request) asks every instance to
    /// flush its counters now.
    Flush(String),
    /// An instance flushed at this request.
    Flushed(String),
    /// A waiter wants the stream of the answer to this key of this
    /// namespace (its tag): the instance holding the key's lease starts it.
    /// Anyone on the channel can send one: it only ever starts the stream
    /// of a key its receiver leads, and at most once.
    Want(String, Key),
}

impl Event {
    pub(super) fn encode(&self) -> String {
        match self {
            Self::Done(key) => format!("d:{key}"),
            Self::Unstored(key) => format!("u:{key}"),
            Self::Replaced(key, origin) => format!("r:{key}:{origin}"),
            Self::Purged(key) => format!("p:{key}"),
            Self::PurgedNamespace => "n".to_owned(),
            Self::Flush(request) => format!("f:{request}"),
            Self::Flushed(request) => format!("a:{request}"),
            Self::Want(ns, key) => format!("w:{ns}:{key}"),
        }
    }

    pub(super) fn decode(payload: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(payload).ok()?;
        match text.split_once(':') {
            Some(("d", hex)) => Key::from_hex(hex).map(Self::Done),
            Some(("p", hex)) => Key::from_hex(hex).map(Self::Purged),
            Some(("u", hex)) => Key::from_hex(hex).map(Self::Unstored),
            Some(("r", rest)) => {
                let (hex, origin) = rest.split_once(':')?;
                Key::from_hex(hex).map(|key| Self::Replaced(key, origin.to_owned()))
            }
            Some(("f", request)) if !request.is_empty() => Some(Self::Flush(request.to_owned())),
            Some(("a", request)) if !request.is_empty() => Some(Self::Flushed(request.to_owned())),
            Some(("w", rest)) => {
                let (ns, hex) = rest.split_once(':')?;
                // A namespace's tag: 16 lowercase hex digits (`ns_tag`).
                let tag = ns.len() == 16
                    && ns
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
                if !tag {
                    return None;
                }
                Key::from_hex(hex).map(|key| Self::Want(ns.to_owned(), key))
            }
            None if text == "n" => Some(Self::PurgedNamespace),
            _ => None,
        }
    }
}

/// How often an idle subscription checks that its node still answers.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// Runs for the life of the store: subscribes through one of `nodes`,
/// dispatches, and moves to the next node when the subscription breaks.
pub(super) async fn subscribe(
    nodes: Vec<redis::Client>,
    channel: String,
    inner: Weak<Inner>,
    timeout: Duration,
) {
    let mut backoff = Duration::from_millis(50);
    let mut next = 0;
    loop {
        let Some(client) = nodes.get(next % nodes.len().max(1)) else {
            return;
        };
        let connect = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        match tokio::time::timeout(timeout, connect).await {
            Ok(Ok(pubsub)) => {
                backoff = Duration::from_millis(50);
                let Some(store) = inner.upgrade() else { return };
                store.waiters.wake_all();
                // Purges and refreshes sent before this subscription were
                // missed: since the last one, or, for the first, since the
                // store began to serve (entries read from Redis meanwhile
                // may be stale).
                store.invalidate(Invalidation::Missed);
                drop(store);
                let (mut sink, mut messages) = pubsub.split();
                // A node that hangs (paused, partitioned) ends no stream: a
                // ping it does not answer in time moves the subscription on.
                let mut heartbeat = tokio::time::interval(HEARTBEAT);
                heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    let next = poll_fn(|cx| Pin::new(&mut messages).poll_next(cx));
                    let message = tokio::select! {
                        message = next => message,
                        _ = heartbeat.tick() => {
                            let ping = sink.ping::<redis::Value>();
                            match tokio::time::timeout(timeout, ping).await {
                                Ok(Ok(_)) => continue,
                                _ => {
                                    tracing::debug!("redis subscription on {channel} stopped answering");
                                    break;
                                }
                            }
                        }
                    };
                    let Some(message) = message else { break };
                    let Some(store) = inner.upgrade() else { return };
                    match Event::decode(message.get_payload_bytes()) {
                        Some(event) => store.dispatch(event),
                        None => tracing::debug!("ignoring an unknown message on {channel}"),
                    }
                }
                tracing::debug!("redis subscription on {channel} ended; moving on");
            }
            Ok(Err(error)) => tracing::debug!(%error, "redis subscription failed; retrying"),
            Err(_) => tracing::debug!("redis subscription timed out; retrying"),
        }
        if inner.strong_count() == 0 {
            return;
        }
        next += 1;
        // Try every node once quickly, then back off between rounds.
        if next % nodes.len() == 0 {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}

impl Inner {
    /// Publishes `event`. On a cluster, through the node owning `route` (a
    /// key the event is about) when given: it is up if that key is usable.
    pub(super) async fn publish(
        &self,
        event: Event,
        route: Option<&str>,
    ) -> Result<(), StoreError> {
        use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};

        let mut publish = redis::cmd("PUBLISH");
        publish.arg(self.channel()).arg(event.encode());
        match (&self.conn, route) {
            (Conn::Cluster(cluster), Some(name)) => {
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
                    Route::with_key(name, SlotAddr::Master),
                ));
                self.run(
                    Some(name),
                    self.settings.write_timeout,
                    cluster.clone().route_command(publish, routing),
                )
                .await
                .map(drop)
            }
            (Conn::Cluster(cluster), None) => {
                // Any node will do: try a few, in case one is down.
                let mut result = Ok(());
                for _ in 0..3 {
                    let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary);
                    result = self
                        .run(
                            None,
                            self.settings.write_timeout,
                            cluster.clone().route_command(publish.clone(), routing),
                        )
                        .await
                        .map(drop);
                    if result.is_ok() {
                        break;
                    }
                }
                result
            }
            (Conn::Single(_), _) => self
                .run(
                    None,
                    self.settings.write_timeout,
                    publish.query_async::<i64>(&mut self.conn.clone()),
                )
                .await
                .map(drop),
        }
    }

    /// Acts on a message from any instance (this one included).
    fn dispatch(self: &Arc<Self>, event: Event) {
        match event {
            Event::Done(key) => self.waiters.wake(&key),
            Event::Unstored(key) => self.waiters.pass(&key),
            Event::Replaced(key, origin) => {
                // The instance that stored it holds the fresh entry already.
                if origin != self.instance {
                    self.invalidate(Invalidation::Replaced(key));
                }
                self.waiters.wake(&key);
            }
            Event::Purged(key) => self.invalidate(Invalidation::Purged(key)),
            Event::PurgedNamespace => self.invalidate(Invalidation::PurgedNamespace),
            Event::Flush(request) => {
                // Off the subscription's task: the flush makes round trips.
                self.runtime
                    .spawn(flush_on_request(Arc::clone(self), request));
            }
            Event::Flushed(request) => self.answer(&request),
            Event::Want(ns, key) => {
                // Only a lease this store holds: its writer starts the
                // stream, once. Anything else is dropped here.
                let lease = self.names(&ns, &key).lease;
                if !self.leading.want(&lease) {
                    tracing::trace!(%key, "ignoring a want for a key not led here");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_and_garbage_is_ignored() {
        let key = Key::from_bytes([7; 32]);
        for event in [
            Event::Done(key),
            Event::Unstored(key),
            Event::Replaced(key, "a1b2c3".to_owned()),
            Event::Purged(key),
            Event::PurgedNamespace,
            Event::Flush("a1b2c3-7".to_owned()),
            Event::Flushed("a1b2c3-7".to_owned()),
            Event::Want("0123456789abcdef".to_owned(), key),
        ] {
            assert_eq!(Event::decode(event.encode().as_bytes()), Some(event));
        }
        for garbage in [
            &b""[..],
            b"d:",
            b"d:zz",
            b"x:00",
            b"\xff\xfe",
            b"n:extra",
            b"r:00",
            b"f:",
            b"a:",
            b"w:",
            b"w:0123456789abcdef",
            b"w:0123456789abcdef:",
            b"w:0123456789abcdef:zz",
            b"w::0707070707070707070707070707070707070707070707070707070707070707",
            b"w:0123456789ABCDEF:0707070707070707070707070707070707070707070707070707070707070707",
            b"w:0123456789abcde:0707070707070707070707070707070707070707070707070707070707070707",
            b"w:0123456789abcdef0:0707070707070707070707070707070707070707070707070707070707070707",
            b"w:{x}:0707070707070707070707070707070707070707070707070707070707070707",
            b"w:0123456789abcdef:0707070707070707070707070707070707070707070707070707070707070707:x",
        ] {
            assert_eq!(Event::decode(garbage), None);
        }
    }
}
