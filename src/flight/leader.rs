//! The leader: the one request that calls upstream and publishes the
//! response into its flight.

use std::{future::poll_fn, mem, sync::Arc, task::Poll};

use bytes::Bytes;
use http::HeaderMap;

use super::{
    budget::Budget,
    drive::Drive,
    reader::{Reader, EVICTED},
    state::{End, Flight, Head, Phase},
    Flights,
};
use crate::{
    error::{BoxError, SharedError},
    record::{Meta, Record},
};

/// The guard of a flight's one upstream call.
///
/// Dropping it before it answers the flight ([`replay`](Leader::replay),
/// [`complete`](Leader::complete), [`give_up`](Leader::give_up) or
/// [`fail`](Leader::fail)) abandons the flight, so a panic or a cancellation anywhere in the leader hands the call over to a
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
    /// The leader of `flight`, registered in `flights` unless it is a solo
    /// flight.
    pub(super) fn new(
        flights: Option<Arc<Flights>>,
        budget: Arc<Budget>,
        flight: Arc<Flight>,
    ) -> Self {
        Self {
            flights,
            budget,
            flight,
            finished: false,
        }
    }

    /// The leader's caller's hold on the recording this leader will run in
    /// (see [`Drive`]).
    pub(crate) fn drive(&self) -> Drive {
        Drive::new(Arc::clone(&self.flight))
    }

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

    /// Whether anyone still reads the response: the leader's own caller or
    /// a follower.
    pub(crate) fn has_readers(&self) -> bool {
        self.flight.state().readers > 0
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
