//! Metrics through the `metrics` facade (with the `metrics` feature), so any
//! recorder (Prometheus, StatsD, …) sees what the layer does. The engine
//! reports through its `observe` step; without the feature every function
//! here does nothing.
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

#[cfg(feature = "metrics")]
mod emit {
    use super::*;

    /// One request answered, `cache` saying how (see the table above).
    pub(crate) fn outcome(cache: &'static str) {
        metrics::counter!("tower_idempotency_requests_total", "cache" => cache).increment(1);
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

    pub(crate) fn outcome(_: &'static str) {}
    #[cfg(feature = "redis")]
    pub(crate) fn store_error() {}
    pub(crate) fn upstream(_: Duration) {}
    pub(crate) fn saved(_: u64, _: u64, _: u64) {}
}

#[cfg(feature = "redis")]
pub(crate) use emit::store_error;
pub(crate) use emit::{outcome, saved, upstream};
