//! One flight: the response head it shares, the chunks its readers walk,
//! and how a follower joins it.

use std::{
    collections::VecDeque,
    future::poll_fn,
    mem,
    sync::{Arc, Mutex, MutexGuard},
    task::{Poll, Waker},
};

use bytes::Bytes;
use http::{HeaderMap, StatusCode, Version};

use super::{
    budget::Budget,
    drive::Driver,
    lock,
    reader::{Reader, EVICTED},
};
use crate::{
    error::SharedError,
    key::Key,
    record::{Meta, Record, Vary},
};

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
    pub(super) key: Key,
    fingerprint: Option<Key>,
    state: Mutex<State>,
    /// Where the leader's recording runs (`drive.rs`).
    pub(super) driver: Mutex<Driver>,
}

pub(super) struct State {
    pub(super) phase: Phase,
    /// Readers and joiners waiting for something new.
    pub(super) waiters: Vec<Waker>,
    /// Bytes of the recording budget this flight holds.
    pub(super) reserved: u64,
    /// Body chunks not yet released; `chunks[0]` is chunk number `base`.
    pub(super) chunks: VecDeque<Bytes>,
    pub(super) base: usize,
    pub(super) held: usize,
    pub(super) received: u64,
    /// Whether every chunk is kept for the record.
    pub(super) recording: bool,
    /// Position of each live reader (index of its next chunk), by slot.
    pub(super) positions: Vec<Option<usize>>,
    pub(super) readers: usize,
    /// Followers that joined before the leader settled the flight.
    pub(super) followers: u64,
    /// What the leader learned of the complete response, and its length:
    /// followers that join later count their own savings from it.
    pub(super) settled: Option<(Arc<Meta>, u64)>,
    /// The leader's body task, waiting for readers to make room.
    pub(super) driver: Option<Waker>,
    pub(super) end: Option<End>,
}

pub(super) enum Phase {
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
pub(super) enum End {
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
    pub(super) fn new(key: Key, fingerprint: Option<Key>) -> Self {
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
            driver: Mutex::new(Driver::Idle),
        }
    }

    pub(super) fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Whether the flight has nothing left to give a newcomer: its body has
    /// ended, or its leader stopped before a head.
    pub(super) fn is_over(&self) -> bool {
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

    pub(super) fn publish(&self, update: impl FnOnce(&mut State)) {
        let waiters = {
            let mut state = self.state();
            update(&mut state);
            mem::take(&mut state.waiters)
        };
        waiters.into_iter().for_each(Waker::wake);
    }
}

impl State {
    pub(super) fn add_reader(&mut self, flight: &Arc<Flight>) -> Reader {
        let slot = match self.positions.iter().position(Option::is_none) {
            Some(slot) => slot,
            None => {
                self.positions.push(None);
                self.positions.len() - 1
            }
        };
        self.positions[slot] = Some(self.base);
        self.readers += 1;
        Reader::new(Arc::clone(flight), slot, self.base)
    }

    /// Stops recording and returns the flight's budget.
    pub(super) fn stop_recording(&mut self, budget: &Budget) {
        self.recording = false;
        budget.release(mem::take(&mut self.reserved));
    }

    /// Releases the chunks every reader has passed (only once not recording).
    pub(super) fn release(&mut self) {
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
    pub(super) fn slowest(&self) -> Option<usize> {
        self.positions
            .iter()
            .flatten()
            .copied()
            .filter(|&position| position != EVICTED)
            .min()
    }

    pub(super) fn wake_driver(&mut self) {
        if let Some(driver) = self.driver.take() {
            driver.wake();
        }
    }
}
