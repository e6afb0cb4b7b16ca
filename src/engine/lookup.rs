//! The in-process steps: the L1 look-up, then the flight map, where one
//! request leads and its concurrent duplicates follow (joining its stored
//! answer or its live response), within the wait deadline.

use std::sync::Arc;

use http::HeaderMap;
use http_body::Body;

use super::{
    key::Job,
    observe::Outcome,
    respond::{in_flight, key_reused},
    upstream::{Answer, Pending, Upstream},
    Engine,
};
use crate::{
    body::RequestBody,
    cache_status::CacheStatus,
    error::BoxError,
    flight::{Joined, Role},
    record::{now_millis, Record},
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
                    let (record, outcome) =
                        Box::pin(self.over_provisional(job, record, pending.headers())).await;
                    return Ok(self.hit(job, &record, outcome));
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
                            if self.fits(job, &record, pending.headers()) {
                                let (record, outcome) = match record.info.provisional {
                                    true => {
                                        Box::pin(self.over_provisional(
                                            job,
                                            record,
                                            pending.headers(),
                                        ))
                                        .await
                                    }
                                    false => (record, Outcome::HitL1),
                                };
                                leader.replay(Arc::clone(&record));
                                return Ok(self.hit(job, &record, outcome));
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

    /// What to replay for a provisional copy found in L1: the shared
    /// store's entry, kept in L1 in its place, if the shared store has one
    /// for this request; else the copy. The copy was this instance's own
    /// call in place of another instance's, whose answer, once stored, is
    /// the one every instance gives; until then, or while the store cannot
    /// be read, the copy stands. Each hit on a copy costs one read of the
    /// shared store, as a hit there does.
    async fn over_provisional(
        &self,
        job: &Job,
        copy: Arc<Record>,
        headers: &HeaderMap,
    ) -> (Arc<Record>, Outcome) {
        match self.l2.peek(&job.ns, &job.key).await {
            Some(record) if self.fits(job, &record, headers) => {
                self.l1.insert(job.key, Arc::clone(&record)).await;
                (record, Outcome::HitL2)
            }
            _ => (copy, Outcome::HitL1),
        }
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
