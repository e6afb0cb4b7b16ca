//! Where entries live: the in-process L1 and, with the `redis` or `sqlite`
//! feature, the L2.
//!
//! - `memory`: the L1, a `moka` cache weighed in bytes.
//! - `l2`: the engine's view of the L2, whichever it is (or none), so that
//!   feature flags stay out of the engine. It also keeps the engine's L1
//!   following the L2's invalidations.
//! - `invalidation`: what a shared L2 tells the L1 caches in front of it
//!   (purges and refreshes made anywhere), and the task that applies it.
//! - `redis`: `RedisStore`, shared by every instance.
//! - `sqlite`: `SqliteStore`, one durable file.
//! - `breaker`: the circuit breaker both L2s put in front of their backend.

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

pub(crate) use l2::{
    Backend, FleetCounter, Follow, Lease, Lookup, Renewal, StreamEntry, StreamWriter, L2,
};
pub(crate) use memory::MemoryStore;
