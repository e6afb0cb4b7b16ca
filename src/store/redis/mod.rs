//! L2: one shared cache, and one upstream call, across every instance.
//!
//! The user-facing documentation (the layout in Redis, round trips, failure
//! rules) is on [`RedisStore`]. This module is organised by concern:
//!
//! | file | owns |
//! |---|---|
//! | `store.rs` | [`RedisStore`] and the state its clones share |
//! | `builder.rs` | [`RedisStoreBuilder`]: settings and connecting |
//! | `connection.rs` | one handle to a node or a cluster; every operation under a timeout and a circuit breaker |
//! | `breaker.rs` | the circuit breakers, one per range of cluster slots |
//! | `keys.rs` | the names of keys and channels, the namespace tag |
//! | `scripts.rs` | the Lua scripts, one per atomic step |
//! | `lookup.rs` | look-up-or-claim, and store-and-release-and-notify |
//! | `lease.rs` | a leader's claim on a key: renewal and release |
//! | `waiters.rs` | local requests waiting for a key computed elsewhere |
//! | `pubsub.rs` | the events channel: messages, the subscription, dispatch |
//! | `stream/` | live streams across instances: the leader appends, followers elsewhere read |
//! | `counters.rs` | hits and fleet totals counted locally, flushed in batches |
//! | `admin.rs` | analytics and purges, off the request path |
//! | `cluster.rs` | cluster nodes, and `SCAN` on every primary |
//! | `stats.rs` | the public analytics types |
//! | `error.rs` | [`StoreError`] |

mod admin;
mod breaker;
mod buckets;
mod builder;
mod cluster;
mod connection;
mod counters;
mod error;
mod keys;
mod lease;
mod lookup;
mod pubsub;
pub(crate) mod scripts;
mod stats;
mod store;
mod stream;
mod waiters;

pub use self::{
    builder::RedisStoreBuilder,
    error::StoreError,
    stats::{EntryStats, FleetStats, TopEntry},
    store::RedisStore,
};
pub(crate) use self::{
    keys::ns_tag,
    lease::{Lease, Renewal},
    stream::{Follow, StreamEntry, StreamWriter},
    waiters::Watch,
};
