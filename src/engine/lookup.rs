//! The in-process steps: the L1 look-up, then the flight map, where one
//! request leads and its concurrent duplicates follow (joining its stored
//! answer or its live response), within the wait deadline.

use std::sync::Arc;

use http::{HeaderMap, Response};
use http_body::Body;

use super::{
    key::Job,
    observe::Outcome,
    respond::{in_flight, key_reused},
    upstream::{Answer, Pending, Upstream},
    Engine,
};
use crate::{
    body::{RequestBody, ResponseBody},
    cache_status::CacheStatus,
    error::BoxError,
    flight::{Joined, Role},
    record::now_millis,
};

impl Engine {
    /// Answers a keyed request: from L1, from a flight in progress, or as
    /// the leader of a new one.
    pub(super) async fn answer<B, U>(
        self: Arc<Self>,
        pending: Pending<U>,
    ) -> Answer<U::Body, U::Error>
    where
        U: Upstream<RequestBody<B>>,
        <U::Body as Body>::Error: Into<BoxError>,
    {
        let job = &pending.job;
        if job.refresh {
            let leader = self.flights.solo(job.key, job.fingerprint);
            return Box::pin(self.call_upstream(leader, None, pending)).await;
        }
        // Read before the look-up: if it has not moved when this request
        // becomes a leader, nothing was stored under the key in between.
        let generation = self.l1.generation(&job.key);
        let now = now_millis();
        if let Some(record) = self.l1.get_at(&job.key, now).await {
            if self.fits(job, &record, pending.headers()) {
                if record.info.provisional {
                    // Boxed: a rare path, which an ordinary hit's future
                    // should not carry.
                    let shared = Box::pin(self.shared_over_provisional(job, pending.headers()));
                    if let Some(hit) = shared.await {
                        return Ok(hit);
                    }
                }
                return Ok(self.hit_at(job, &record, Outcome::HitL1, now));
            }
        }
        // A follower waits for its leader at most this long, like a waiter
        // on another instance.
        let deadline = tokio::time::Instant::now().checked_add(self.config.wait_timeout);
        loop {
            let job = &pending.job;
            match self.flights.join_or_lead(job.key, job.fingerprint) {
                Role::Follow(flight) => {
                    if job.fingerprint.is_some() {
                        if flight.fingerprint() != job.fingerprint {
                            return Ok(self.reject(key_reused()));
                        }
                        if self.config.strict {
                            return Ok(self.reject(in_flight()));
                        }
                    }
                    let joined = flight.join(pending.headers());
                    let joined = match deadline {
                        Some(deadline) => tokio::time::timeout_at(deadline, joined).await,
                        None => Ok(joined.await),
                    };
                    let Ok(joined) = joined else {
                        self.count_wait_timeout();
                        if self.config.strict {
                            return Ok(self.reject(in_flight()));
                        }
                        return Box::pin(self.alone(pending)).await;
                    };
                    match joined {
                        Joined::Replay(record) if self.fits(job, &record, pending.headers()) => {
                            return Ok(self.hit(job, &record, Outcome::Coalesced { live: false }))
                        }
                        Joined::Replay(_) | Joined::Alone => {
                            return Box::pin(self.alone(pending)).await
                        }
                        Joined::Live(head, reader, settled) => {
                            self.observe(Outcome::Coalesced { live: true });
                            let cost =
                                settled.map(|(meta, bytes)| self.count_savings(&meta, bytes, 1));
                            self.count_tenant_saved(job, cost);
                            self.count_bucket_hit(job);
                            return Ok(self.live(
                                &head,
                                &head.shared_headers,
                                reader,
                                CacheStatus::Collapsed,
                            ));
                        }
                        Joined::Retry => continue,
                    }
                }
                Role::Lead(leader) => {
                    // The look-up above may have raced a flight that stored
                    // its answer and left the map: look again, unless no
                    // insert has completed since (a flight stores before it
                    // leaves the map, and it left before this leader came).
                    if self.l1.generation(&job.key) != generation {
                        if let Some(record) = self.l1.get(&job.key).await {
                            // A provisional copy gives way to the shared
                            // store's entry, which the leader's path reads.
                            if !record.info.provisional
                                && self.fits(job, &record, pending.headers())
                            {
                                leader.replay(Arc::clone(&record));
                                return Ok(self.hit(job, &record, Outcome::HitL1));
                            }
                        }
                    }
                    // Boxed: the leader's path (L2, the upstream call) is a
                    // large future, which a hit should not carry (every
                    // request's future is moved into place whole).
                    return Box::pin(self.lead_shared(leader, pending)).await;
                }
            }
        }
    }

    /// The shared store's entry, replayed and kept in L1 in place of the
    /// provisional copy found there, if the shared store has one for this
    /// request: the copy was this instance's own call in place of another
    /// instance's, whose answer, once stored, is the one every instance
    /// gives. Without one (not stored yet, or the store unreadable), the
    /// copy stands.
    async fn shared_over_provisional<B>(
        &self,
        job: &Job,
        headers: &HeaderMap,
    ) -> Option<Response<ResponseBody<B>>> {
        let record = self.l2.peek(&job.ns, &job.key).await?;
        if !self.fits(job, &record, headers) {
            return None;
        }
        self.l1.insert(job.key, Arc::clone(&record)).await;
        Some(self.hit(job, &record, Outcome::HitL2))
    }

    /// Calls upstream for a request no flight can serve, without a flight
    /// others could join.
    async fn alone<B, U>(self: Arc<Self>, pending: Pending<U>) -> Answer<U::Body, U::Error>
    where
        U: Upstream<RequestBody<B>>,
        <U::Body as Body>::Error: Into<BoxError>,
    {
        let leader = self.flights.solo(pending.job.key, pending.job.fingerprint);
        self.call_upstream(leader, None, pending).await
    }
}
