//! The shared store (L2) step, taken by the local leader: a hit, the lease
//! on the key (then the upstream call), or a wait for the instance that
//! holds it, woken by its notification, within the wait deadline; or, when
//! that instance streams its answer, forward the stream as it arrives, and
//! go through in its place should Redis fail mid-stream.

use std::{
    future::Future,
    pin::pin,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::{Buf, Bytes};
use http::{Request, Response};
use http_body::Body;
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use tokio::time::timeout;
use tracing::Instrument;

use super::{
    ai::{self, UsageReader},
    key::Job,
    observe::Outcome,
    respond::{in_flight, key_reused},
    tee::fresh_record,
    upstream::{Answer, Pending, Upstream},
    Engine,
};
use crate::{
    body::RequestBody,
    cache_status::CacheStatus,
    error::BoxError,
    flight::{Head, Leader},
    policy,
    record::{Meta, Vary},
    store::{Follow, Lookup, StreamEntry},
    tenants::Tally,
};

impl Engine {
    /// The local leader asks the shared store: a hit, the lease (then call
    /// upstream), or wait for the instance that holds it.
    pub(super) async fn lead_shared<B, U>(
        self: Arc<Self>,
        leader: Leader,
        pending: Pending<U>,
    ) -> Answer<U::Body, U::Error>
    where
        U: Upstream<RequestBody<B>>,
        <U::Body as Body>::Error: Into<BoxError>,
    {
        let job = &pending.job;
        // Registered before the first look-up: a completion announced between
        // a look-up and the wait that follows it is not missed.
        let Some(watch) = self.l2.watch(job.key) else {
            // A store without cross-process single flight: one look-up. An
            // entry stored for other values of the headers it varies on is a
            // miss, whose fresh answer replaces it.
            if let Lookup::Hit(record) = self.l2.lookup(&job.ns, &job.key).await {
                if !self.fits(job, &record, pending.headers()) {
                    return self.call_upstream(leader, None, pending).await;
                }
                self.l1.insert(job.key, Arc::clone(&record)).await;
                leader.replay(Arc::clone(&record));
                return Ok(self.hit(job, &record, Outcome::HitL2));
            }
            return self.call_upstream(leader, None, pending).await;
        };
        // No deadline past what `Instant` can hold.
        let deadline = Instant::now().checked_add(self.config.wait_timeout);
        loop {
            let job = &pending.job;
            let notified = watch.notify().notified();
            let mut notified = pin!(notified);
            notified.as_mut().enable();
            // The call we waited for ended without storing its answer: go
            // through now, alongside every other waiter, rather than claim
            // the key one after another.
            if watch.passed() {
                return self.call_upstream(leader, None, pending).await;
            }
            match self.l2.lookup(&job.ns, &job.key).await {
                Lookup::Hit(record) if self.fits(job, &record, pending.headers()) => {
                    self.l1.insert(job.key, Arc::clone(&record)).await;
                    leader.replay(Arc::clone(&record));
                    return Ok(self.hit(job, &record, Outcome::HitL2));
                }
                // Stored for other values of the headers it varies on: a
                // miss, whose fresh answer replaces the entry.
                Lookup::Hit(_) => return self.call_upstream(leader, None, pending).await,
                Lookup::Claimed(lease) => {
                    return self.call_upstream(leader, Some(lease), pending).await;
                }
                Lookup::Garbage | Lookup::Unavailable => {
                    return self.call_upstream(leader, None, pending).await;
                }
                Lookup::Busy(lease_left) => {
                    if job.fingerprint.is_some() && self.config.strict {
                        return Ok(self.reject(in_flight()));
                    }
                    let now = Instant::now();
                    if deadline.is_some_and(|deadline| now >= deadline) {
                        self.count_wait_timeout();
                        if self.config.strict {
                            return Ok(self.reject(in_flight()));
                        }
                        return self.call_upstream(leader, None, pending).await;
                    }
                    // A leader that streams its answer: forward it live.
                    if let Some(follow) = self.l2.follow(&job.ns, &job.key).await {
                        return self.follow_remote(leader, pending, follow).await;
                    }
                    // Woken by the notification; else look again when the
                    // lease could have run out, and at least every poll
                    // interval in case a message was lost.
                    let nap = (lease_left + Duration::from_millis(5))
                        .min(self.l2.poll_interval())
                        .min(deadline.map_or(Duration::MAX, |deadline| deadline - now));
                    let _ = tokio::time::timeout(nap, notified).await;
                }
            }
        }
    }
}

impl Engine {
    /// Follows the answer another instance streams: its head now, its body
    /// as it arrives, relayed through this instance's flight so that local
    /// followers share it too. The remote leader stores its answer; this
    /// instance keeps one only if it has to go through itself.
    async fn follow_remote<B, U>(
        self: Arc<Self>,
        leader: Leader,
        pending: Pending<U>,
        follow: Follow,
    ) -> Answer<U::Body, U::Error>
    where
        U: Upstream<RequestBody<B>>,
        <U::Body as Body>::Error: Into<BoxError>,
    {
        let job = &pending.job;
        let record = Arc::clone(&follow.head);
        // Not for this request's values of the headers it varies on.
        if !self.fits(job, &record, pending.headers()) {
            return self.call_upstream(leader, None, pending).await;
        }
        if let (Some(mine), Some(theirs)) = (job.fingerprint, record.info.fingerprint) {
            if mine != theirs {
                return Ok(self.reject(key_reused()));
            }
        }
        let head = Arc::new(Head {
            status: record.status,
            version: record.version,
            headers: record.headers.clone(),
            shared_headers: record.headers.clone(),
            content_length: policy::content_length(&record.headers),
            storable: false,
            promised: false,
            shareable: true,
            vary: Vary::of(&record.headers, self.keyed()),
            vary_digest: record.info.vary,
        });
        let reader = leader.start(Arc::clone(&head));
        let Pending {
            job,
            parts,
            body,
            upstream,
        } = pending;
        let relay = Relay {
            leader,
            follow,
            head: Arc::clone(&head),
            job,
            model: ai::request_model(&body),
        };
        // The request as it would have gone upstream: the relay's fall-back.
        let request = Request::from_parts(parts, RequestBody::buffered(body));
        upstream.relay(Arc::clone(&self), relay, request);
        Ok(self.live(&head, &head.headers, reader, CacheStatus::Collapsed))
    }

    /// Relays a remote stream in a task of its own, which awaits `fresh`
    /// (the request's own upstream call, not started until then) should
    /// Redis fail mid-stream: for an upstream that may outlive its caller.
    pub(crate) fn relay_detached<F, RB, E>(self: Arc<Self>, relay: Relay, fresh: F)
    where
        F: Future<Output = Result<Response<RB>, E>> + Send + 'static,
        RB: Body + Send + 'static,
        RB::Error: Into<BoxError>,
        E: Send + 'static,
    {
        tokio::spawn(self.relay(relay, Some(fresh)).in_current_span());
    }

    /// Relays a remote stream in a task of its own, without a fall-back:
    /// for an upstream that borrows from its caller (a client middleware
    /// chain), gone once the caller has the head. Should Redis fail
    /// mid-stream, the body ends with an error.
    #[cfg(feature = "reqwest")]
    pub(crate) fn relay_attached(self: Arc<Self>, relay: Relay) {
        type Never = std::future::Ready<Result<http::Response<http_body_util::Empty<Bytes>>, ()>>;
        tokio::spawn(self.relay(relay, None::<Never>).in_current_span());
    }

    /// Publishes a remote stream's body into the local flight, until its
    /// end. The leader's upstream body failing ends the body with an
    /// error, as it does the leader's own caller's: never a truncated body
    /// passed off as complete. Any other failure (the leader died or lost
    /// its lease, the answer outgrew the stream, Redis failed, stopped,
    /// lost the stream or held garbage, the stream idle past the idle
    /// timeout): the request goes through itself with `fall_back`, if it
    /// has one, else its body ends with an error. A leader that died and a
    /// Redis that lost its keys (killed, restarted empty) look the same.
    ///
    /// The request counts as coalesced unless it goes through; then it is
    /// an upstream call (a miss), and saves nothing.
    async fn relay<F, RB, E>(self: Arc<Self>, relay: Relay, fall_back: Option<F>)
    where
        F: Future<Output = Result<Response<RB>, E>>,
        RB: Body,
        RB::Error: Into<BoxError>,
    {
        let Relay {
            mut leader,
            mut follow,
            head,
            job,
            model,
        } = relay;
        let idle = self.config.idle_timeout;
        let limit = self.config.max_response_body as u64;
        let mut usage = UsageReader::new(&head.headers);
        let mut forwarded = Forwarded::default();
        let why = loop {
            match timeout(idle, follow.entries.recv()).await {
                Ok(Some(StreamEntry::Chunk(chunk))) => {
                    // Nobody left to forward to: stop reading the stream.
                    if !leader.has_readers() {
                        return self.relay_failed(leader, &job, "every reader went away");
                    }
                    usage.feed(&chunk);
                    forwarded.feed(&chunk);
                    leader.push(chunk, limit);
                }
                Ok(Some(StreamEntry::End(trailers))) => {
                    let body = usage.needs_body().then(|| leader.recorded().0).flatten();
                    let meta = usage.finish(model, body.as_ref(), job.fingerprint);
                    self.observe(Outcome::Coalesced { live: true });
                    // This request's savings, and those of the local
                    // followers that joined its flight.
                    let received = forwarded.len;
                    let followers = leader.settle(Arc::new(meta.clone()), received);
                    let cost = self.count_savings(&meta, received, followers + 1);
                    self.count_tenant_saved(&job, Some(cost));
                    self.count_bucket_hit(&job);
                    return leader.complete(trailers);
                }
                Ok(Some(StreamEntry::LeaderFailed)) => {
                    return self.relay_failed(leader, &job, "the leader's body failed");
                }
                Ok(Some(StreamEntry::Failed(why))) => break why,
                Ok(None) => break "the remote stream stopped before its end",
                Err(_) => break "the remote stream was idle past the idle timeout",
            }
        };
        drop(follow);
        match fall_back {
            // Nobody is left to pay a call for.
            Some(_) if !leader.has_readers() => self.relay_failed(leader, &job, why),
            Some(fresh) => {
                tracing::debug!(why, "going through: the remote stream failed");
                self.fall_back(leader, &head, &job, model, forwarded, fresh)
                    .await;
            }
            None => self.relay_failed(leader, &job, why),
        }
    }

    /// Ends a relayed body with an error: the request was coalesced, and
    /// saved its caller nothing but a call.
    fn relay_failed(&self, leader: Leader, job: &Job, why: &'static str) {
        self.observe(Outcome::Coalesced { live: true });
        self.count_tenant_saved(job, None);
        self.count_bucket_hit(job);
        leader.fail(why.into());
    }

    /// Goes through after a remote stream failed, having forwarded `head`
    /// and the `forwarded` bytes: the fresh answer continues the body only
    /// if it has the same status, content type and encoding, and starts
    /// with exactly those bytes, and then ends where it ends (at the length
    /// the head announced, if it did). Anything else ends the body with an error: a
    /// spliced body never passes for complete. A fresh answer that may be
    /// stored is kept in L1, not in the shared store: the remote leader
    /// stores its own answer there, or nobody does.
    async fn fall_back<F, RB, E>(
        &self,
        mut leader: Leader,
        head: &Head,
        job: &Job,
        model: Option<String>,
        forwarded: Forwarded,
        fresh: F,
    ) where
        F: Future<Output = Result<Response<RB>, E>>,
        RB: Body,
        RB::Error: Into<BoxError>,
    {
        self.observe(Outcome::Miss);
        self.count_tenant(job, Tally::Upstream);
        let called_at = Instant::now();
        let response = timeout(self.config.upstream_timeout, fresh).await;
        self.upstream_latency(called_at.elapsed());
        let Ok(Ok(response)) = response else {
            self.count_upstream_error();
            return leader
                .fail("the remote stream failed, and so did the call in its place".into());
        };
        // The caller has the head: the body must be read the same way, and
        // be the same representation (a validator or digest that changed
        // names another one, whatever its first bytes). And it may only
        // reach the duplicates sharing this flight if it may be shared.
        let another_head = response.status() != head.status
            || SAME_REPRESENTATION.iter().any(|name| {
                response
                    .headers()
                    .get_all(*name)
                    .iter()
                    .ne(head.headers.get_all(*name))
            })
            || policy::response_forbids_storing(response.headers());
        if another_head {
            return leader.fail(
                "the remote stream failed, and the call in its place answered another head".into(),
            );
        }
        let limit = self.config.max_response_body as u64;
        let mut prefix = Prefix::new(forwarded);
        let mut usage = UsageReader::new(&head.headers);
        let mut received = 0u64;
        let mut trailers = None;
        let (parts, body) = response.into_parts();
        let mut body = pin!(body);
        loop {
            // As the leader's recording task does: readers that make no
            // room for the idle timeout are dropped.
            match timeout(self.config.idle_timeout, leader.room(limit as usize)).await {
                Ok(true) => {}
                Ok(false) => return leader.fail("every reader went away".into()),
                Err(_) => {
                    leader.drop_slowest();
                    continue;
                }
            }
            let frame = match timeout(self.config.idle_timeout, body.as_mut().frame()).await {
                Err(_) => {
                    return leader.fail("the upstream body was idle past the idle timeout".into())
                }
                Ok(None) => break,
                Ok(Some(Err(error))) => return leader.fail(error.into()),
                Ok(Some(Ok(frame))) => frame,
            };
            match frame.into_data() {
                Ok(mut data) => {
                    let chunk = data.copy_to_bytes(data.remaining());
                    received += chunk.len() as u64;
                    usage.feed(&chunk);
                    if head.content_length.is_some_and(|len| received > len) {
                        return leader.fail(too_long());
                    }
                    match prefix.pass(chunk) {
                        Ok(rest) if rest.is_empty() => {}
                        Ok(rest) => {
                            leader.push(rest, limit);
                        }
                        Err(Mismatch) => return leader.fail(differs()),
                    }
                }
                Err(frame) => trailers = frame.into_trailers().ok(),
            }
        }
        if !prefix.passed() {
            return leader.fail(differs());
        }
        if head.content_length.is_some_and(|len| received != len) {
            return leader.fail(too_long());
        }
        // This instance paid for the call: it keeps the answer, as its own
        // leader would, so that a duplicate arriving here later is a hit
        // while Redis is still failing. In L1 only, and provisional: the
        // shared store is the remote leader's to fill, and once it holds
        // the leader's answer, that is the one replayed here too
        // (`over_provisional`). The head's `Vary` digest holds for
        // the values this request sent only if the fresh answer varies on
        // the same headers.
        let terms = self.terms(&parts, Some(received), job);
        let keep = terms.storable && terms.vary == head.vary;
        // A copy of the body, only if it is kept or its usage is read.
        let recorded = (keep || usage.needs_body())
            .then(|| leader.recorded().0)
            .flatten();
        let mut meta = usage.finish(model, recorded.as_ref(), job.fingerprint);
        meta.vary = head.vary_digest;
        if let (Some(body), true) = (recorded, keep) {
            let headers = policy::shareable_headers(&parts.headers);
            let provisional = Meta {
                provisional: true,
                ..meta.clone()
            };
            let record = fresh_record(head, headers, body, trailers.as_ref(), provisional, job.ttl);
            // Stored before the readers see the end, as a leader stores.
            self.l1.insert(job.key, Arc::new(record)).await;
            self.count_stored();
        }
        // The local followers that joined this request's flight saved a
        // call each.
        let followers = leader.settle(Arc::new(meta.clone()), received);
        self.count_savings(&meta, received, followers);
        leader.complete(trailers);
    }
}

/// The headers a fresh answer must repeat to continue a body whose head
/// the caller already has.
const SAME_REPRESENTATION: [&str; 9] = [
    "content-type",
    "content-encoding",
    "content-language",
    "content-range",
    "etag",
    "last-modified",
    "digest",
    "content-digest",
    "repr-digest",
];

fn differs() -> BoxError {
    "the remote stream failed, and the call in its place answered other bytes than those forwarded"
        .into()
}

fn too_long() -> BoxError {
    "the remote stream failed, and the call in its place answered another length".into()
}

/// A remote stream relayed into this instance's flight: what the relay
/// task needs to forward it, to count it, and to go through in its place.
pub(crate) struct Relay {
    leader: Leader,
    follow: Follow,
    head: Arc<Head>,
    job: Job,
    /// The model the request asks for, for its savings.
    model: Option<String>,
}

/// The body bytes forwarded so far: their length and SHA-256 digest, which
/// is what a fall-back must start with. A digest, not the bytes: holding
/// them would cost up to the response limit per follower, outside the
/// recording budget.
#[derive(Default)]
struct Forwarded {
    len: u64,
    digest: Sha256,
}

impl Forwarded {
    fn feed(&mut self, chunk: &[u8]) {
        self.len += chunk.len() as u64;
        self.digest.update(chunk);
    }
}

/// Checks that a body starts with the forwarded bytes.
struct Prefix {
    /// Bytes of the prefix not read yet.
    left: u64,
    expected: [u8; 32],
    digest: Sha256,
}

/// A fresh body that does not start with the bytes forwarded.
#[derive(Debug, PartialEq, Eq)]
struct Mismatch;

impl Prefix {
    fn new(forwarded: Forwarded) -> Self {
        Self {
            left: forwarded.len,
            expected: forwarded.digest.finalize().into(),
            digest: Sha256::new(),
        }
    }

    /// Reads the next chunk of the fresh body: what of it comes after the
    /// prefix (empty while within it), or [`Mismatch`] once the prefix is
    /// read and differs.
    fn pass(&mut self, mut chunk: Bytes) -> Result<Bytes, Mismatch> {
        if self.left == 0 {
            return Ok(chunk);
        }
        let within = chunk.split_to(
            chunk
                .len()
                .min(usize::try_from(self.left).unwrap_or(usize::MAX)),
        );
        self.digest.update(&within);
        self.left -= within.len() as u64;
        if self.left == 0 && <[u8; 32]>::from(self.digest.finalize_reset()) != self.expected {
            return Err(Mismatch);
        }
        Ok(chunk)
    }

    /// Whether the whole prefix was read, and matched.
    fn passed(&self) -> bool {
        self.left == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forwarded(chunks: &[&str]) -> Forwarded {
        let mut forwarded = Forwarded::default();
        chunks.iter().for_each(|c| forwarded.feed(c.as_bytes()));
        forwarded
    }

    #[test]
    fn a_fresh_body_continues_only_after_exactly_the_forwarded_bytes() {
        // Cut differently from what was forwarded: the rest comes out.
        let mut prefix = Prefix::new(forwarded(&["data: 1\n\n", "data: 2\n\n"]));
        assert_eq!(prefix.pass(Bytes::from("data: 1\n\nda")), Ok(Bytes::new()));
        assert!(!prefix.passed());
        assert_eq!(
            prefix.pass(Bytes::from("ta: 2\n\ndata: 3\n\n")),
            Ok(Bytes::from("data: 3\n\n"))
        );
        assert!(prefix.passed());
        assert_eq!(prefix.pass(Bytes::from("end")), Ok(Bytes::from("end")));

        // One byte differs.
        let mut prefix = Prefix::new(forwarded(&["data: 1\n\n"]));
        assert_eq!(prefix.pass(Bytes::from("data: 9\n\nmore")), Err(Mismatch));

        // Shorter than what was forwarded: never passed.
        let mut prefix = Prefix::new(forwarded(&["data: 1\n\n"]));
        assert_eq!(prefix.pass(Bytes::from("data")), Ok(Bytes::new()));
        assert!(!prefix.passed());

        // Nothing forwarded: everything comes out.
        let mut prefix = Prefix::new(Forwarded::default());
        assert!(prefix.passed());
        assert_eq!(prefix.pass(Bytes::from("all")), Ok(Bytes::from("all")));
    }
}
