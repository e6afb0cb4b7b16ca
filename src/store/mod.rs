//! Where entries live: the in-process L1 and, with the `redis` feature, the
//! shared L2.

mod l2;
mod memory;
#[cfg(feature = "redis")]
pub(crate) mod redis;

pub(crate) use l2::{FleetCounter, Lease, Lookup, Renewal, L2};
pub(crate) use memory::MemoryStore;
