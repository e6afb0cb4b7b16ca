//! The `gateway` example as a separate process, in front of real upstream
//! servers on loopback and, for sharing, a `redis-server` these tests start.
//!
//! The tests run the example binary that cargo builds with the tests
//! (`target/<profile>/examples/gateway`): a plain `cargo test` builds it;
//! `cargo test --test gateway` alone does not, so run
//! `cargo build --example gateway` first.

#[path = "../support/mod.rs"]
mod support;

mod harness;
mod upstream;

mod admin;
mod bodies;
mod connections;
mod control;
#[cfg(feature = "sqlite")]
mod durable;
mod flags;
mod forwarding;
mod memory;
mod sharing;
mod shutdown;
mod stats;
mod streaming;
mod timeouts;
