//! A reader: one caller's walk through a flight's response body, the
//! leader's own caller and each follower alike.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

use super::state::{End, Flight, Phase};
use crate::error::BoxError;

/// The position of a reader dropped for holding the others back: its next
/// read fails, and its slot is not reused until it is dropped.
pub(super) const EVICTED: usize = usize::MAX;

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
    /// A reader of `flight` in `slot`, starting at chunk number `next`.
    pub(super) fn new(flight: Arc<Flight>, slot: usize, next: usize) -> Self {
        Self {
            flight,
            slot,
            next,
            read: 0,
            done: false,
        }
    }
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
