//! Single flight: one upstream call for many concurrent identical requests.
//!
//! The first request for a key becomes the [`Leader`] of a [`Flight`]; later
//! ones [`join`](Flight::join) it as followers. The leader's upstream response
//! is published chunk by chunk into the flight; every reader (the leader's own
//! caller and each follower) walks the same list of chunks at its own pace, so
//! a follower that joins late first gets the chunks so far, then the rest
//! live.
//!
//! Sharing: a head that must not be reused (`private`, `no-store`,
//! `Vary: *`) takes the flight out of the map at once, and its followers
//! each call upstream themselves; so does a follower whose values of the
//! headers the response varies on differ from the leader's.
//!
//! Memory: while the response is being recorded, the flight holds at most the
//! response limit (that is the record), and every flight's record draws on
//! one [`Budget`]. Past the limit or the budget the record is dropped, its
//! bytes return to the budget, the flight leaves the map (a newcomer could
//! not see the start any more), chunks are released as soon as every reader
//! has passed them, and the upstream body is read no faster than the slowest
//! reader allows.
//!
//! End: the flight leaves the map before its end is published, and a flight
//! found over is never joined: a request sent after a response ended never
//! gets it (it finds the stored entry, or calls upstream).
//!
//! Failure: if the upstream call fails or times out before a head, every
//! follower goes through itself at once (failover is never serialised). If
//! the leader goes away before the head (it panicked, or its caller was
//! dropped), the flight is abandoned and its followers race to lead a new
//! one: exactly one wins, the others follow it. Nobody waits on a leader
//! that is gone.
//!
//! # Layout
//!
//! - this file: the map of flights in progress, sharded by key, and the
//!   [`Role`] a request gets from it;
//! - `state`: one [`Flight`], the [`Head`] it shares, its chunks and
//!   readers, and how a follower [`join`](Flight::join)s it;
//! - `leader`: the [`Leader`], which publishes the upstream response;
//! - `reader`: a [`Reader`], one caller's walk through the body;
//! - `drive`: who drives the leader's recording, its caller or a task of
//!   its own ([`Drive`]);
//! - `budget`: the recording [`Budget`] every flight draws on.

mod budget;
mod drive;
mod leader;
mod reader;
mod state;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

pub(crate) use budget::Budget;
pub(crate) use leader::Leader;
pub(crate) use reader::Reader;
pub(crate) use state::{Flight, Head, Joined};

use crate::key::{BuildKeyHasher, Key};

const SHARDS: usize = 64;

/// The flights in progress, by key.
pub(crate) struct Flights {
    shards: Box<[Mutex<Shard>]>,
    budget: Arc<Budget>,
}

type Shard = HashMap<Key, Arc<Flight>, BuildKeyHasher>;

/// What a request is to a flight.
pub(crate) enum Role {
    Lead(Leader),
    Follow(Arc<Flight>),
}

impl Flights {
    pub(crate) fn new(budget: u64) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            budget: Arc::new(Budget::new(budget)),
        }
    }

    pub(crate) fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }

    fn shard(&self, key: &Key) -> MutexGuard<'_, Shard> {
        // Keys are SHA-256 output: any byte spreads them evenly.
        lock(&self.shards[usize::from(key.as_bytes()[0]) % SHARDS])
    }

    /// Follows the flight in progress for `key`, or starts one led by the
    /// caller. `fingerprint` is the leader's payload in `Idempotency-Key`
    /// mode, for followers to compare theirs with.
    pub(crate) fn join_or_lead(self: &Arc<Self>, key: Key, fingerprint: Option<Key>) -> Role {
        let mut map = self.shard(&key);
        // A flight leaves the map before it ends, so one found here is live;
        // should an ended one linger all the same, it is never joined.
        if let Some(flight) = map.get(&key).filter(|flight| !flight.is_over()) {
            let flight = Arc::clone(flight);
            drop(map);
            // A follower never waits on the leader's caller's pace: the
            // recording goes on in a task of its own (`drive.rs`).
            flight.detach();
            return Role::Follow(flight);
        }
        let flight = Arc::new(Flight::new(key, fingerprint));
        map.insert(key, Arc::clone(&flight));
        Role::Lead(Leader::new(
            Some(Arc::clone(self)),
            Arc::clone(&self.budget),
            flight,
        ))
    }

    /// A flight nobody can join: for a request that must reach the inner
    /// service itself (a client's `no-cache`, a follower the flight cannot
    /// serve) but whose answer is recorded.
    pub(crate) fn solo(&self, key: Key, fingerprint: Option<Key>) -> Leader {
        Leader::new(
            None,
            Arc::clone(&self.budget),
            Arc::new(Flight::new(key, fingerprint)),
        )
    }

    pub(super) fn remove(&self, flight: &Arc<Flight>) {
        let mut map = self.shard(&flight.key);
        if map.get(&flight.key).is_some_and(|f| Arc::ptr_eq(f, flight)) {
            map.remove(&flight.key);
        }
    }

    /// How many flights are in progress.
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; if something ever did, the
    // state is still consistent enough to serve and to abandon.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
