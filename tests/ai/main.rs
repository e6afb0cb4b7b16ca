//! Token usage read from recorded shapes of public OpenAI and Anthropic
//! responses, the parsers' robustness against arbitrary input, and what the
//! layer reports saved.

#[path = "../support/mod.rs"]
mod support;

mod fixtures;
#[cfg(feature = "metrics")]
mod metrics;
mod no_panic;
mod savings;
