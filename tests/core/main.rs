//! The core layer, in one process: coalescing, bodies, policy, replay,
//! readiness, and real HTTP on loopback.

#[path = "../support/mod.rs"]
mod support;

mod bodies;
mod coalescing;
mod controls;
mod key_header;
mod keys;
mod loopback;
mod policy;
mod readiness;
mod replay;
