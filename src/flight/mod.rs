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

use std::{
    collections::{HashMap, VecDeque},
    future::poll_fn,
    mem,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard, PoisonError,
    },
    task::{Context, Poll, Waker},
};

use bytes::Bytes;
use http::{HeaderMap, StatusCode, Version};
use http_body::{Frame, SizeHint};

use crate::{
    error::{BoxError, SharedError},
    key::Key,
    record::{Meta, Record, Vary},
};

const SHARDS: usize = 64;

/// The position of a reader dropped for holding the others back: its next
/// read fails, and its slot is not reused until it is dropped.
const EVICTED: usize = usize::MAX;

/// The flights in progress, by key.
pub(crate) struct Flights {
    shards: Box<[Mutex<Shard>]>,
    budget: Arc<Budget>,
}

/// The bytes every recording in flight may hold together.
#[derive(Debug)]
pub(crate) struct Budget {
    limit: u64,
    used: AtomicU64,
}

impl Budget {
    pub(crate) fn new(limit: u64) -> Self {
        Self {
            limit,
            used: AtomicU64::new(0),
        }
    }

    /// Takes `bytes` from the budget, if they are left.
    fn reserve(&self, bytes: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }

    fn release(&self, bytes: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(bytes))
            });
    }

    /// Bytes reserved now.
    pub(crate) fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }
}

type Shard = HashMap<Key, Arc<Flight>>;

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
            return Role::Follow(Arc::clone(flight));
        }
        let flight = Arc::new(Flight::new(key, fingerprint));
        map.insert(key, Arc::clone(&flight));
        Role::Lead(Leader {
            flights: Some(Arc::clone(self)),
            budget: Arc::clone(&self.budget),
            flight,
            finished: false,
        })
    }

    /// A flight nobody can join: for a request that must reach the inner
    /// service itself (a client's `no-cache`, a follower the flight cannot
    /// serve) but whose answer is recorded.
    pub(crate) fn solo(&self, key: Key, fingerprint: Option<Key>) -> Leader {
        Leader {
            flights: None,
            budget: Arc::clone(&self.budget),
            flight: Arc::new(Flight::new(key, fingerprint)),
            finished: false,
        }
    }

    fn remove(&self, flight: &Arc<Flight>) {
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

/// The response head every reader of a flight shares.
#[derive(Debug)]
pub(crate) struct Head {
    pub(crate) status: StatusCode,
    pub(crate) version: Version,
    /// The upstream headers, as the leader's own caller gets them.
    pub(crate) headers: HeaderMap,
    /// The headers followers get and a record keeps.
    pub(crate) shared_headers: HeaderMap,
    pub(crate) content_length: Option<u64>,
    /// Whether the response will be stored if it completes within the limit
    /// and the recording budget.
    pub(crate) storable: bool,
    /// Whether it will be stored for sure: its length is known, within the
    /// limit, and reserved in the recording budget.
    pub(crate) promised: bool,
    /// Whether followers may share it: not `private`, `no-store` nor
    /// `Vary: *` (collapsing requests onto one response is reuse).
    pub(crate) shareable: bool,
    /// What else than the key a request must match to share it, and the
    /// digest of the leader's values.
    pub(crate) vary: Vary,
    pub(crate) vary_digest: Option<Key>,
}

/// One upstream call and everyone waiting for it.
pub(crate) struct Flight {
    key: Key,
    fingerprint: Option<Key>,
    state: Mutex<State>,
}

struct State {
    phase: Phase,
    /// Readers and joiners waiting for something new.
    waiters: Vec<Waker>,
    /// Bytes of the recording budget this flight holds.
    reserved: u64,
    /// Body chunks not yet released; `chunks[0]` is chunk number `base`.
    chunks: VecDeque<Bytes>,
    base: usize,
    held: usize,
    received: u64,
    /// Whether every chunk is kept for the record.
    recording: bool,
    /// Position of each live reader (index of its next chunk), by slot.
    positions: Vec<Option<usize>>,
    readers: usize,
    /// Followers that joined before the leader settled the flight.
    followers: u64,
    /// What the leader learned of the complete response, and its length:
    /// followers that join later count their own savings from it.
    settled: Option<(Arc<Meta>, u64)>,
    /// The leader's body task, waiting for readers to make room.
    driver: Option<Waker>,
    end: Option<End>,
}

enum Phase {
    /// The leader is looking up or calling upstream.
    Pending,
    /// The leader found a stored entry.
    Replay(Arc<Record>),
    /// The upstream answered; the body streams through `chunks`.
    Live(Arc<Head>),
    /// The leader went away before a head: one follower takes over.
    Abandoned,
    /// The upstream call failed (or timed out) before a head: each follower
    /// goes through itself, at once.
    Failed,
}

#[derive(Clone)]
enum End {
    Complete(Option<HeaderMap>),
    Failed(SharedError),
}

/// What joining a flight gave a follower.
pub(crate) enum Joined {
    Replay(Arc<Record>),
    /// The live response; with the entry's metadata and length when the
    /// leader had already settled the flight (this follower then counts its
    /// own savings).
    Live(Arc<Head>, Reader, Option<(Arc<Meta>, u64)>),
    /// The flight cannot serve this follower: lead or follow a new one.
    Retry,
    /// The flight's answer is not for this follower (private, varying on
    /// its headers, or failed): it must call upstream itself.
    Alone,
}

impl Flight {
    fn new(key: Key, fingerprint: Option<Key>) -> Self {
        Self {
            key,
            fingerprint,
            state: Mutex::new(State {
                phase: Phase::Pending,
                waiters: Vec::new(),
                reserved: 0,
                chunks: VecDeque::new(),
                base: 0,
                held: 0,
                received: 0,
                recording: true,
                positions: Vec::new(),
                readers: 0,
                followers: 0,
                settled: None,
                driver: None,
                end: None,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Whether the flight has nothing left to give a newcomer: its body has
    /// ended, or its leader stopped before a head.
    fn is_over(&self) -> bool {
        let state = self.state();
        state.end.is_some() || matches!(state.phase, Phase::Abandoned | Phase::Failed)
    }

    /// The leader's payload fingerprint, in `Idempotency-Key` mode.
    pub(crate) fn fingerprint(&self) -> Option<Key> {
        self.fingerprint
    }

    /// Waits for the leader's outcome. `request` is the follower's own
    /// request headers, to match a response's `Vary`.
    pub(crate) async fn join(self: &Arc<Self>, request: &HeaderMap) -> Joined {
        poll_fn(|cx| {
            let mut state = self.state();
            match &state.phase {
                Phase::Pending => {
                    state.waiters.push(cx.waker().clone());
                    Poll::Pending
                }
                Phase::Replay(record) => Poll::Ready(Joined::Replay(Arc::clone(record))),
                Phase::Live(head)
                    if !head.shareable || !head.vary.fits(head.vary_digest, request) =>
                {
                    Poll::Ready(Joined::Alone)
                }
                // Chunks were released past the limit: the start is gone.
                Phase::Live(_) if state.base > 0 => Poll::Ready(Joined::Retry),
                Phase::Live(head) => {
                    let head = Arc::clone(head);
                    let settled = state.settled.clone();
                    if settled.is_none() {
                        state.followers += 1;
                    }
                    let reader = state.add_reader(self);
                    Poll::Ready(Joined::Live(head, reader, settled))
                }
                Phase::Abandoned => Poll::Ready(Joined::Retry),
                Phase::Failed => Poll::Ready(Joined::Alone),
            }
        })
        .await
    }

    fn publish(&self, update: impl FnOnce(&mut State)) {
        let waiters = {
            let mut state = self.state();
            update(&mut state);
            mem::take(&mut state.waiters)
        };
        waiters.into_iter().for_each(Waker::wake);
    }
}

impl State {
    fn add_reader(&mut self, flight: &Arc<Flight>) -> Reader {
        let slot = match self.positions.iter().position(Option::is_none) {
            Some(slot) => slot,
            None => {
                self.positions.push(None);
                self.positions.len() - 1
            }
        };
        self.positions[slot] = Some(self.base);
        self.readers += 1;
        Reader {
            flight: Arc::clone(flight),
            slot,
            next: self.base,
            read: 0,
            done: false,
        }
    }

    /// Stops recording and returns the flight's budget.
    fn stop_recording(&mut self, budget: &Budget) {
        self.recording = false;
        budget.release(mem::take(&mut self.reserved));
    }

    /// Releases the chunks every reader has passed (only once not recording).
    fn release(&mut self) {
        if self.recording {
            return;
        }
        let end = self.base + self.chunks.len();
        let min = self.slowest().unwrap_or(end);
        while self.base < min {
            let Some(chunk) = self.chunks.pop_front() else {
                break;
            };
            self.held -= chunk.len();
            self.base += 1;
        }
    }

    /// The position of the slowest reader still served.
    fn slowest(&self) -> Option<usize> {
        self.positions
            .iter()
            .flatten()
            .copied()
            .filter(|&position| position != EVICTED)
            .min()
    }

    fn wake_driver(&mut self) {
        if let Some(driver) = self.driver.take() {
            driver.wake();
        }
    }
}

/// The guard of a flight's one upstream call.
///
/// Dropping it before [`finish`](Leader::finish) abandons the flight, so a
/// panic or a cancellation anywhere in the leader hands the call over to a
/// follower instead of stranding it. Dropping it always takes the flight out
/// of the map.
pub(crate) struct Leader {
    flights: Option<Arc<Flights>>,
    budget: Arc<Budget>,
    flight: Arc<Flight>,
    finished: bool,
}

/// What happened to a pushed chunk.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    Recording,
    /// This chunk took the body past the limit or the recording budget:
    /// the record is dropped.
    Overflowed,
    NotRecording,
}

impl Leader {
    /// Answers the flight with a stored entry.
    pub(crate) fn replay(mut self, record: Arc<Record>) {
        self.flight
            .publish(|state| state.phase = Phase::Replay(record));
        self.finished = true;
    }

    /// Reserves `bytes` of the recording budget for this flight's record,
    /// ahead of its chunks. Returns whether they were left.
    pub(crate) fn reserve(&self, bytes: u64) -> bool {
        let reserved = self.budget.reserve(bytes);
        if reserved {
            self.flight.state().reserved += bytes;
        }
        reserved
    }

    /// Publishes the upstream head; returns the leader's own reader. A head
    /// followers may not share takes the flight out of the map at once, so
    /// that newcomers lead their own, and is not recorded: it will not be
    /// stored, and no follower needs its start, so it holds none of the
    /// recording budget.
    pub(crate) fn start(&self, head: Arc<Head>) -> Reader {
        let shareable = head.shareable;
        let mut reader = None;
        self.flight.publish(|state| {
            state.phase = Phase::Live(head);
            reader = Some(state.add_reader(&self.flight));
            if !shareable {
                state.stop_recording(&self.budget);
            }
        });
        if !shareable {
            self.unregister();
        }
        reader.expect("set under the lock")
    }

    /// Publishes a body chunk. Past `limit` bytes, or past the recording
    /// budget, the record is dropped.
    pub(crate) fn push(&self, chunk: Bytes, limit: u64) -> Pushed {
        let mut pushed = Pushed::NotRecording;
        self.flight.publish(|state| {
            state.received += chunk.len() as u64;
            state.held += chunk.len();
            state.chunks.push_back(chunk);
            if state.recording {
                let more = state.received.saturating_sub(state.reserved);
                // Past the limit, or more than the budget has left.
                pushed = if state.received > limit || (more > 0 && !self.budget.reserve(more)) {
                    state.stop_recording(&self.budget);
                    Pushed::Overflowed
                } else {
                    state.reserved += more;
                    Pushed::Recording
                };
            }
            state.release();
        });
        if pushed == Pushed::Overflowed {
            self.unregister();
        }
        pushed
    }

    /// Once not recording, waits until the readers hold less than `window`
    /// bytes. Returns `false` when no reader is left to serve.
    pub(crate) async fn room(&self, window: usize) -> bool {
        poll_fn(|cx| {
            let mut state = self.flight.state();
            if state.recording {
                return Poll::Ready(true);
            }
            state.release();
            if state.readers == 0 {
                return Poll::Ready(false);
            }
            // Every reader has caught up: room, whatever the window (a
            // window of zero would otherwise never open).
            if state.held == 0 || state.held < window {
                return Poll::Ready(true);
            }
            state.driver = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Drops the readers that hold the oldest chunk: they did not read for
    /// as long as the upstream may stay idle, and the others must not wait on
    /// them. Their next read fails.
    pub(crate) fn drop_slowest(&self) {
        self.flight.publish(|state| {
            let Some(slowest) = state.slowest() else {
                return;
            };
            for position in &mut state.positions {
                if *position == Some(slowest) {
                    *position = Some(EVICTED);
                    state.readers -= 1;
                }
            }
            state.release();
        });
    }

    /// The whole body so far, if it is being recorded, and how many bytes
    /// were received. Called once the upstream body has ended, before
    /// [`complete`](Self::complete) tells the readers.
    pub(crate) fn recorded(&self) -> (Option<Bytes>, u64) {
        let state = self.flight.state();
        // One exact-size copy, even of a single chunk: a chunk is often a
        // slice of the connection's read buffer, and keeping it would keep
        // that whole buffer alive for the entry's lifetime, unweighed.
        let body = state.recording.then(|| {
            let mut out = Vec::with_capacity(state.held);
            state.chunks.iter().for_each(|c| out.extend_from_slice(c));
            Bytes::from(out)
        });
        (body, state.received)
    }

    /// Ends the body for every reader. The flight leaves the map first: a
    /// request that arrives after the end never joins it.
    pub(crate) fn complete(&mut self, trailers: Option<HeaderMap>) {
        self.unregister();
        self.release_budget();
        self.flight
            .publish(|state| state.end = Some(End::Complete(trailers)));
        self.finished = true;
    }

    /// Ends the flight before a head because the upstream call failed or
    /// timed out: every follower goes through itself, concurrently.
    pub(crate) fn give_up(mut self) {
        self.unregister();
        self.flight.publish(|state| state.phase = Phase::Failed);
        self.finished = true;
    }

    /// Records what the leader learned of the complete response. Returns how
    /// many followers joined before: the leader counts their savings, later
    /// ones count their own.
    pub(crate) fn settle(&self, meta: Arc<Meta>, received: u64) -> u64 {
        let mut state = self.flight.state();
        state.settled = Some((meta, received));
        state.followers
    }

    /// Ends the body with an error every reader sees.
    pub(crate) fn fail(mut self, error: BoxError) {
        let error = SharedError(Arc::new(error));
        self.unregister();
        self.release_budget();
        self.flight
            .publish(|state| state.end = Some(End::Failed(error)));
        self.finished = true;
    }

    /// The recording is over: its bytes are stored (and weigh in L1) or
    /// lost.
    fn release_budget(&self) {
        let reserved = mem::take(&mut self.flight.state().reserved);
        self.budget.release(reserved);
    }

    fn unregister(&self) {
        if let Some(flights) = &self.flights {
            flights.remove(&self.flight);
        }
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        self.release_budget();
        if !self.finished {
            self.flight.publish(|state| match state.phase {
                Phase::Pending => state.phase = Phase::Abandoned,
                Phase::Live(_) if state.end.is_none() => {
                    let error: BoxError = "the upstream call was abandoned".into();
                    state.end = Some(End::Failed(SharedError(Arc::new(error))));
                }
                _ => {}
            });
        }
        self.unregister();
    }
}

/// One reader's view of a flight's response body.
pub(crate) struct Reader {
    flight: Arc<Flight>,
    slot: usize,
    next: usize,
    /// Body bytes this reader has returned.
    read: u64,
    done: bool,
}

impl Reader {
    pub(crate) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let mut state = self.flight.state();
        if state.positions.get(self.slot) == Some(&Some(EVICTED)) {
            self.done = true;
            let error: BoxError = "this reader fell behind the others for the idle timeout".into();
            return Poll::Ready(Some(Err(error)));
        }
        if let Some(chunk) = state.chunks.get(self.next - state.base).cloned() {
            self.next += 1;
            self.read += chunk.len() as u64;
            state.positions[self.slot] = Some(self.next);
            if !state.recording {
                state.wake_driver();
            }
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        match state.end.clone() {
            None => {
                state.waiters.push(cx.waker().clone());
                Poll::Pending
            }
            Some(End::Complete(trailers)) => {
                self.done = true;
                Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))))
            }
            Some(End::Failed(error)) => {
                self.done = true;
                Poll::Ready(Some(Err(Box::new(error))))
            }
        }
    }

    pub(crate) fn size_hint(&self) -> SizeHint {
        let state = self.flight.state();
        match &state.phase {
            Phase::Live(head) if !self.done => match head.content_length {
                Some(len) => SizeHint::with_exact(len.saturating_sub(self.read)),
                None => SizeHint::default(),
            },
            _ => SizeHint::with_exact(0),
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let mut state = self.flight.state();
        if let Some(position) = state.positions.get_mut(self.slot) {
            // An evicted reader was already taken off the count.
            if position.take().is_some_and(|p| p != EVICTED) {
                state.readers -= 1;
            }
        }
        state.wake_driver();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; if something ever did, the
    // state is still consistent enough to serve and to abandon.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
