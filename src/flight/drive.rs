//! Who drives a leader's recording: its own caller, or a task of its own.
//!
//! The recording (`engine/tee.rs`) awaits the upstream call, publishes its
//! head and chunks into the flight, and stores the answer. A task per miss
//! (its allocation, its scheduling, the wake-ups between it and the caller)
//! was a large part of what a miss cost, while the leader's caller is
//! there, polling, until its response head is ready. So the caller drives
//! the recording until then; an answer whose body is already complete (a
//! handler's in-memory answer) is read, recorded and stored in those same
//! polls, without a task. The recording moves into a task of its own
//! ([`Flight::detach`]) as soon as it must not depend on the caller:
//!
//! - the head is in and the body is not over: the upstream is read as it
//!   comes, whatever pace the caller reads its own body at;
//! - a follower joins (it must never wait on a caller that does not poll);
//! - the leader holds a lease in the shared store (waiters on other
//!   instances wait for it);
//! - the caller goes away before its head: the call was paid for, it
//!   completes and is stored.
//!
//! The recording is polled under [`Flight`]'s driver lock, which is taken
//! before, never under, the flight's state lock and the flight map's shard
//! locks (the recording takes both).

use std::{
    any::Any,
    future::Future,
    mem,
    panic::{self, AssertUnwindSafe},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tokio::{runtime::Handle, task::JoinHandle};

use super::{lock, state::Flight};

/// A leader's recording, as its caller hands it over.
pub(super) type Recording = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Where a flight's recording runs.
pub(super) enum Driver {
    /// Nothing attached yet, or the recording has ended.
    Idle,
    /// The leader's caller polls it.
    Attached {
        recording: Recording,
        /// Where it goes when it detaches.
        runtime: Handle,
    },
    /// In a task of its own; `None` when a follower asked for it before the
    /// recording was attached (it is spawned as it attaches).
    Detached(Option<JoinHandle<()>>),
}

impl Flight {
    /// Hands the recording over; its caller then drives it through `drive`.
    /// If a follower has already asked for it, it goes into a task of its
    /// own at once.
    pub(super) fn attach(&self, recording: Recording) {
        let runtime = Handle::current();
        let mut driver = lock(&self.driver);
        *driver = match mem::replace(&mut *driver, Driver::Idle) {
            Driver::Detached(None) => Driver::Detached(Some(runtime.spawn(recording))),
            _ => Driver::Attached { recording, runtime },
        };
    }

    /// Moves the recording into a task of its own, if its caller still
    /// drives it; else makes sure it will be spawned when it attaches.
    pub(crate) fn detach(&self) {
        let mut driver = lock(&self.driver);
        *driver = match mem::replace(&mut *driver, Driver::Idle) {
            Driver::Attached { recording, runtime } => {
                Driver::Detached(Some(runtime.spawn(recording)))
            }
            Driver::Idle => Driver::Detached(None),
            detached @ Driver::Detached(_) => detached,
        };
    }

    /// Polls the recording, if the caller drives it. Returns the panic's
    /// payload if it panicked: it is then dropped (its leader abandons the
    /// flight).
    fn drive(&self, cx: &mut Context<'_>) -> Result<(), Box<dyn Any + Send>> {
        let mut driver = lock(&self.driver);
        let Driver::Attached { recording, .. } = &mut *driver else {
            return Ok(());
        };
        match panic::catch_unwind(AssertUnwindSafe(|| recording.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Ok(()),
            Ok(Poll::Ready(())) => {
                *driver = Driver::Idle;
                Ok(())
            }
            Err(payload) => {
                *driver = Driver::Idle;
                Err(payload)
            }
        }
    }

    /// The recording's task, if it was detached: how it ended tells why it
    /// gave no answer.
    fn task(&self) -> Option<JoinHandle<()>> {
        match &mut *lock(&self.driver) {
            Driver::Detached(task) => task.take(),
            _ => None,
        }
    }
}

/// The leader's caller's hold on the recording: it drives it while held,
/// and detaches it when dropped.
pub(crate) struct Drive {
    flight: Arc<Flight>,
}

impl Drive {
    pub(super) fn new(flight: Arc<Flight>) -> Self {
        Self { flight }
    }

    /// Hands the recording to this caller (see [`Flight::attach`]).
    pub(crate) fn attach(&self, recording: Recording) {
        self.flight.attach(recording);
    }

    /// Moves the recording into a task of its own now.
    pub(crate) fn detach(&self) {
        self.flight.detach();
    }

    /// Drives the recording one step, if this caller still holds it; a
    /// panic in it is the caller's.
    pub(crate) fn poll(&self, cx: &mut Context<'_>) {
        if let Err(payload) = self.flight.drive(cx) {
            panic::resume_unwind(payload);
        }
    }

    /// The recording's task, if a follower or a lease detached it.
    pub(crate) fn task(&self) -> Option<JoinHandle<()>> {
        self.flight.task()
    }
}

impl Drop for Drive {
    fn drop(&mut self) {
        self.flight.detach();
    }
}
