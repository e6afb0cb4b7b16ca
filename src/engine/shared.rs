//! The shared store (L2) step, taken by the local leader: a hit, the lease
//! on the key (then the upstream call), or a wait for the instance that
//! holds it, woken by its notification, within the wait deadline; or, when
//! that instance streams its answer, forward the stream as it arrives.

use std::{
    pin::pin,
    sync::Arc,
    time::{Duration, Instant},
};

use http_body::Body;

use super::{
    observe::Outcome,
    respond::{in_flight, key_reused},
    upstream::{Answer, Pending, Upstream},
    Engine,
};
use crate::{
    body::RequestBody,
    cache_status::CacheStatus,
    error::BoxError,
    flight::{Head, Leader},
    policy,
    record::Vary,
    store::{Follow, Lookup, StreamEntry},
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
    /// followers share it too. Nothing is stored here: the leader stores.
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
        self.observe(Outcome::Coalesced { live: true });
        let idle = self.config.idle_timeout;
        let limit = self.config.max_response_body as u64;
        tokio::spawn(relay(leader, follow, idle, limit));
        Ok(self.live(&head, &head.headers, reader, CacheStatus::Collapsed))
    }
}

/// Publishes a remote stream's body into the local flight, until its end.
/// A failure, a stream that stops, or one idle past the idle timeout ends
/// the body with an error: never a truncated body passed off as complete.
async fn relay(mut leader: Leader, mut follow: Follow, idle: Duration, limit: u64) {
    loop {
        match tokio::time::timeout(idle, follow.entries.recv()).await {
            Ok(Some(StreamEntry::Chunk(chunk))) => {
                leader.push(chunk, limit);
            }
            Ok(Some(StreamEntry::End(trailers))) => {
                leader.complete(trailers);
                return;
            }
            Ok(Some(StreamEntry::Failed(why))) => return leader.fail(why.into()),
            Ok(None) => return leader.fail("the remote stream stopped before its end".into()),
            Err(_) => {
                return leader.fail("the remote stream was idle past the idle timeout".into())
            }
        }
    }
}
