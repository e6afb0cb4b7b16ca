//! Metrics through the `metrics` facade (with the `metrics` feature), so any
//! recorder (Prometheus, StatsD, …) sees what the layer does.
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `tower_idempotency_requests_total` | counter | `cache`: `hit_l1`, `hit_l2`, `miss`, `coalesced`, `refresh`, `bypass`, `rejected` |
//! | `tower_idempotency_store_errors_total` | counter | |
//! | `tower_idempotency_upstream_seconds` | histogram | |
//! | `tower_idempotency_bytes_saved_total` | counter | |
//! | `tower_idempotency_tokens_saved_total` | counter | |
//! | `tower_idempotency_money_saved_micro_dollars_total` | counter | |

use std::time::Duration;

/// How a request was answered, as the `cache` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    HitL1,
    HitL2,
    Miss,
    Coalesced,
    Refresh,
    Bypass,
    Rejected,
}

impl Outcome {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::HitL1 => "hit_l1",
            Self::HitL2 => "hit_l2",
            Self::Miss => "miss",
            Self::Coalesced => "coalesced",
            Self::Refresh => "refresh",
            Self::Bypass => "bypass",
            Self::Rejected => "rejected",
        }
    }
}

#[cfg(feature = "metrics")]
mod emit {
    use super::*;

    pub(crate) fn outcome(outcome: Outcome) {
        metrics::counter!("tower_idempotency_requests_total", "cache" => outcome.label())
            .increment(1);
    }

    #[cfg(feature = "redis")]
    pub(crate) fn store_error() {
        metrics::counter!("tower_idempotency_store_errors_total").increment(1);
    }

    pub(crate) fn upstream(latency: Duration) {
        metrics::histogram!("tower_idempotency_upstream_seconds").record(latency.as_secs_f64());
    }

    pub(crate) fn saved(bytes: u64, tokens: u64, micro_dollars: u64) {
        metrics::counter!("tower_idempotency_bytes_saved_total").increment(bytes);
        if tokens > 0 {
            metrics::counter!("tower_idempotency_tokens_saved_total").increment(tokens);
        }
        if micro_dollars > 0 {
            metrics::counter!("tower_idempotency_money_saved_micro_dollars_total")
                .increment(micro_dollars);
        }
    }
}

#[cfg(not(feature = "metrics"))]
mod emit {
    use super::*;

    pub(crate) fn outcome(_: Outcome) {}
    #[cfg(feature = "redis")]
    pub(crate) fn store_error() {}
    pub(crate) fn upstream(_: Duration) {}
    pub(crate) fn saved(_: u64, _: u64, _: u64) {}
}

#[cfg(feature = "redis")]
pub(crate) use emit::store_error;
pub(crate) use emit::{outcome, saved, upstream};
