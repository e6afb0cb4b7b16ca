//! Where entries live: the in-process L1 and, with the `redis` or `sqlite`
//! feature, the L2.

#[cfg(any(feature = "redis", feature = "sqlite"))]
mod breaker;
#[cfg(feature = "redis")]
mod invalidation;
mod l2;
mod memory;
#[cfg(feature = "redis")]
pub(crate) mod redis;
#[cfg(feature = "sqlite")]
pub(crate) mod sqlite;

pub(crate) use l2::{Backend, FleetCounter, Lease, Lookup, Renewal, L2};
pub(crate) use memory::MemoryStore;
