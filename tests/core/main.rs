//! The core layer, in one process: coalescing, bodies, policy, replay,
//! readiness, and real HTTP on loopback.

#[path = "../support/mod.rs"]
mod support;

mod bodies;
mod buckets;
mod budget;
mod coalescing;
mod controls;
mod deadlines;
mod key_header;
mod keys;
mod loopback;
mod policy;
mod races;
mod readiness;
mod replay;
mod review;
#[cfg(feature = "redis")]
mod shared_store;
mod tenants;
mod trust;
