//! The shared store (L2) step, taken by the local leader: a hit, the lease
//! on the key (then the upstream call), or a wait for the instance that
//! holds it, woken by its notification, within the wait deadline.

use std::{
    pin::pin,
    sync::Arc,
    time::{Duration, Instant},
};

use http_body::Body;

use super::{
    observe::Outcome,
    respond::in_flight,
    upstream::{Answer, Pending, Upstream},
    Engine,
};
use crate::{body::RequestBody, error::BoxError, flight::Leader, store::Lookup};

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
