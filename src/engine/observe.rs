//! What the engine tells the outside about a request: one [`Outcome`] per
//! request updates the counters behind [`Stats`](crate::stats::Stats) (here
//! and, through the shared store, the fleet's), the `metrics` counter and
//! the request's span together; the other events (stored, timed out,
//! failed) and the savings are counted here too.

use std::{sync::atomic::AtomicU64, time::Duration};

use super::key::Job;
use super::{ai, Engine};
use crate::{
    error::ErrorKind, record::Meta, stats::Counters, store::FleetCounter, telemetry, tenants::Tally,
};

/// How the engine answered a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Replayed from the in-process cache.
    HitL1,
    /// Replayed from the shared store.
    HitL2,
    /// Shared a concurrent leader's answer: its stored record, or (`live`)
    /// its response as it streamed.
    Coalesced { live: bool },
    /// Led the upstream call after a miss.
    Miss,
    /// Went upstream on the client's `no-cache` (or the refresh control
    /// header), to store the fresh answer.
    Refresh,
    /// Sent to the inner service untouched: one upstream call, uncached.
    Bypass(Bypass),
    /// Answered with the layer's own error.
    Rejected(ErrorKind),
}

/// Why a request went to the inner service untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bypass {
    /// The method is not eligible.
    Method,
    /// `Cache-Control: no-store`, or the bypass control header.
    NoStore,
    /// The body was over the limit, or carried trailers.
    TooLarge,
    /// No key: a custom key function declined it, or a client adapter
    /// cannot know the headers it will be sent with.
    NoKey,
    /// The sampling policy ruled it nondeterministic.
    Sampling,
}

impl Outcome {
    /// The `cache` label of `tower_idempotency_requests_total`.
    fn label(self) -> &'static str {
        match self {
            Self::HitL1 => "hit_l1",
            Self::HitL2 => "hit_l2",
            Self::Coalesced { .. } => "coalesced",
            Self::Miss => "miss",
            Self::Refresh => "refresh",
            Self::Bypass(_) => "bypass",
            Self::Rejected(_) => "rejected",
        }
    }

    /// The span's `outcome` field. A bypass leaves the engine before its
    /// span is entered, and records nothing.
    fn span_value(self) -> Option<&'static str> {
        match self {
            Self::Coalesced { live: true } => Some("collapsed"),
            Self::Bypass(_) => None,
            other => Some(other.label()),
        }
    }
}

impl Engine {
    /// Records how a request was answered: counters, metric and span.
    pub(super) fn observe(&self, outcome: Outcome) {
        let counters = &self.counters;
        match outcome {
            Outcome::HitL1 => self.tally(&counters.hits_l1, FleetCounter::HitsL1),
            Outcome::HitL2 => self.tally(&counters.hits_l2, FleetCounter::HitsL2),
            Outcome::Coalesced { .. } => self.tally(&counters.coalesced, FleetCounter::Coalesced),
            Outcome::Miss => {
                self.tally(&counters.misses, FleetCounter::Misses);
                self.count_upstream_call();
            }
            Outcome::Refresh => {
                Counters::inc(&counters.refreshes);
                self.count_upstream_call();
            }
            Outcome::Bypass(reason) => {
                Counters::inc(match reason {
                    Bypass::Method => &counters.bypass_method,
                    Bypass::NoStore => &counters.bypass_no_store,
                    Bypass::TooLarge => &counters.bypass_too_large,
                    Bypass::NoKey => &counters.bypass_no_key,
                    Bypass::Sampling => &counters.bypass_sampling,
                });
                self.count_upstream_call();
            }
            Outcome::Rejected(kind) => {
                let counter = match kind {
                    ErrorKind::RequestBody => Some(&counters.bad_requests),
                    ErrorKind::MissingKey | ErrorKind::InvalidKey | ErrorKind::InvalidControl => {
                        Some(&counters.rejected)
                    }
                    ErrorKind::KeyReused => Some(&counters.key_reused),
                    ErrorKind::InFlight => Some(&counters.in_flight_conflicts),
                    // Counted as an upstream error where it happened.
                    ErrorKind::UpstreamTimeout => None,
                };
                if let Some(counter) = counter {
                    Counters::inc(counter);
                }
            }
        }
        telemetry::outcome(outcome.label());
        if let Some(value) = outcome.span_value() {
            tracing::Span::current().record("outcome", value);
        }
    }

    /// Counts a request the layer saw, whatever becomes of it.
    pub(super) fn count_request(&self) {
        Counters::inc(&self.counters.requests);
    }

    /// Counts a wait for another request's call that ran past its deadline.
    pub(super) fn count_wait_timeout(&self) {
        Counters::inc(&self.counters.wait_timeouts);
    }

    /// Records how long a leader's call took to give its response head (or
    /// to fail).
    pub(super) fn upstream_latency(&self, latency: Duration) {
        telemetry::upstream(latency);
    }

    /// Counts a leader's call that gave no response head.
    pub(super) fn count_upstream_error(&self) {
        Counters::inc(&self.counters.upstream_errors);
    }

    /// Counts a response stored in L1 (and sent to the shared store).
    pub(super) fn count_stored(&self) {
        self.tally(&self.counters.stored, FleetCounter::Stored);
    }

    /// Counts what `calls` avoided calls to an upstream that answered
    /// `bytes` of body described by `info` saved: bytes, tokens, money.
    /// Returns what one such call costs: tokens and micro-dollars.
    pub(super) fn count_savings(&self, info: &Meta, bytes: u64, calls: u64) -> (u64, u64) {
        let bytes = bytes * calls;
        let cost = ai::cost(&self.config.ai, info);
        let (tokens, micro_dollars) = (cost.0 * calls, cost.1 * calls);
        Counters::add(&self.counters.bytes_saved, bytes);
        Counters::add(&self.counters.tokens_saved, tokens);
        Counters::add(&self.counters.micro_dollars_saved, micro_dollars);
        telemetry::saved(bytes, tokens, micro_dollars);
        cost
    }

    /// Counts an answer from a sample bucket picked at random.
    pub(super) fn count_bucket_hit(&self, job: &Job) {
        if job.bucketed {
            Counters::inc(&self.counters.bucket_hits);
        }
    }

    /// Counts a request of `job`'s tenant, when tenants are counted.
    pub(super) fn count_tenant(&self, job: &Job, tally: Tally) {
        if let (Some(tenants), Some(tenant)) = (&self.tenants, job.tenant) {
            tenants.count(tenant, tally);
            let counts = match tally {
                Tally::Upstream => [1, 1, 0, 0, 0],
                Tally::Saved {
                    tokens,
                    micro_dollars,
                } => [1, 0, 1, tokens, micro_dollars],
            };
            self.l2.count_tenant(&tenant, counts);
        }
    }

    /// Counts a call `job`'s tenant did not pay for, and what it saved when
    /// the answer's cost is known (`cost`, tokens and micro-dollars, from
    /// [`count_savings`](Self::count_savings); a live follower that joined
    /// before the leader's body ended is credited the call only).
    pub(super) fn count_tenant_saved(&self, job: &Job, cost: Option<(u64, u64)>) {
        let (tokens, micro_dollars) = cost.unwrap_or((0, 0));
        self.count_tenant(
            job,
            Tally::Saved {
                tokens,
                micro_dollars,
            },
        );
    }

    fn count_upstream_call(&self) {
        self.tally(&self.counters.upstream_calls, FleetCounter::UpstreamCalls);
    }

    /// Counts an event here and in the fleet totals.
    fn tally(&self, local: &AtomicU64, fleet: FleetCounter) {
        Counters::inc(local);
        self.l2.count(fleet, 1);
    }
}
